//! Offer submit load in-process and collect every attempt: the harness's entry point.
//!
//! [`run_submit_load`] runs the goose `submit` scenario (the same code as the `loadtest`
//! binary) against one host for a while, quietly, and returns a [`SubmitRecord`] for every
//! request it sent.
//!
//! # Rate: a throttled closed model, not an open one
//!
//! Goose has no open workload model. It runs `users` concurrent users, each sending its next
//! request when the previous one has been answered, and `--throttle-requests` caps the total
//! to `rate_per_s` (a leaky bucket). The offered rate therefore approximates `rate_per_s`
//! only while `users` can keep up: at most `users / latency` requests per second go out, and
//! when the server stalls (a request takes up to `request_timeout`), the rate drops instead
//! of requests queueing up. Choose `users ≥ rate_per_s × request_timeout` to keep the rate
//! through a stall; the records' `started_unix_ms` show what was actually offered.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use goose::config::GooseConfiguration;
use goose::prelude::*;
use serde::{Deserialize, Serialize};

use crate::follow_up::{Delays, FollowUpRecord, FollowUps};
use crate::outcome::SubmitRecord;
use crate::scenarios::{SUBMIT, submit_scenario};
use crate::submit::{LoadProgress, SubmitContext};

/// How much submit load to offer, to which host, for how long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmitLoad {
    /// Base URL of the orchestrator, e.g. `http://127.0.0.1:8001`.
    pub host: String,
    /// Requests per second to aim for (goose's throttle), at least 1.
    pub rate_per_s: u32,
    /// How long to hold the load once all users run; rounded up to whole seconds, at least 1.
    pub duration: Duration,
    /// Concurrent goose users, at least 1 (see the module docs for how many are needed).
    pub users: usize,
    /// After this long without an answer a request is given up and recorded as `info`.
    pub request_timeout: Duration,
    /// Prefix of every idempotency key, `{run_id}-{op}`; make it unique per run.
    pub run_id: String,
    /// Cancels and reads that follow acknowledged submits (none by default); they count
    /// against `rate_per_s` like submits.
    #[serde(default)]
    pub follow_ups: FollowUps,
    /// Scheduled submits (`delay_ms`), none by default.
    #[serde(default)]
    pub delays: Delays,
    /// Live counts of the submits' outcomes, updated while the load runs (for a progress
    /// display); `None` counts nothing. Not part of the serialized form.
    #[serde(skip)]
    pub progress: Option<Arc<LoadProgress>>,
}

/// Everything one load sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadRecords {
    /// Every submit attempt, ordered by `op`.
    pub submits: Vec<SubmitRecord>,
    /// Every follow-up, in the order they ended.
    pub follow_ups: Vec<FollowUpRecord>,
}

/// Runs the `submit` scenario as `load` describes and returns every attempt, ordered by `op`.
///
/// Goose's final metrics are not printed and its console output is reduced to warnings
/// (`--quiet`), which still means one line per transport error (e.g. while the orchestrator
/// is down). Goose logs through the `log` crate and installs its own stdout logger only if
/// the process has none: install a `tracing` subscriber with its `log` bridge first (as
/// `tracing_subscriber::fmt().init()` does) and filter with `goose=error` to silence it.
///
/// Goose keeps some process-wide state (its killswitch and a Ctrl-C handler installed with
/// the `ctrlc` crate on first use, which fails quietly if one is already set), so run one
/// load at a time per process; consecutive runs are fine and never share records. Let the
/// future complete: dropping it mid-run leaves goose's users running until their current
/// request ends. In-flight requests are awaited when the run ends, so the last records
/// have real outcomes; an attempt the throttle never let out is not recorded (its `op` is
/// skipped).
pub async fn run_submit_load(load: SubmitLoad) -> anyhow::Result<Vec<SubmitRecord>> {
    Ok(run_load(load).await?.submits)
}

/// [`run_submit_load`], returning the follow-ups (cancels, reads) as well.
pub async fn run_load(load: SubmitLoad) -> anyhow::Result<LoadRecords> {
    let args = goose_arguments(&load)?;
    load.follow_ups
        .validate()
        .map_err(|why| anyhow::anyhow!("follow-ups: {why}"))?;
    load.delays
        .validate()
        .map_err(|why| anyhow::anyhow!("delays: {why}"))?;
    let configuration = GooseConfiguration::parse_args_default(&args)
        .with_context(|| format!("goose refused the arguments {args:?}"))?;
    let mut context = SubmitContext::recording(load.run_id.clone())
        .with_follow_ups(load.follow_ups)
        .with_delays(load.delays);
    if let Some(progress) = &load.progress {
        context = context.with_progress(Arc::clone(progress));
    }
    let context = Arc::new(context);
    GooseAttack::initialize_with_config(configuration)
        .context("initialising goose")?
        .register_scenario(submit_scenario(&context))
        .execute()
        .await
        .with_context(|| format!("running submit load against {}", load.host))?;
    Ok(LoadRecords {
        submits: context.take_records(),
        follow_ups: context.take_follow_ups(),
    })
}

/// The goose command line for `load`.
fn goose_arguments(load: &SubmitLoad) -> anyhow::Result<Vec<String>> {
    if load.rate_per_s == 0 {
        bail!("rate_per_s must be at least 1 (goose's throttle treats 0 as unlimited)");
    }
    if load.users == 0 {
        bail!("users must be at least 1");
    }
    if load.run_id.is_empty() {
        bail!("run_id must not be empty: it makes the idempotency keys unique");
    }
    if load.request_timeout < Duration::from_millis(1) {
        bail!("request_timeout must be at least 1 ms");
    }
    // Goose takes whole seconds.
    let run_seconds = load.duration.as_secs() + u64::from(load.duration.subsec_nanos() > 0);
    // Start every user within about 50 ms, so the run is close to `duration` long.
    let increase_rate = (load.users.saturating_mul(20)).clamp(1, 100_000);
    Ok(vec![
        "--host".into(),
        load.host.clone(),
        "--users".into(),
        load.users.to_string(),
        "--increase-rate".into(),
        increase_rate.to_string(),
        "--run-time".into(),
        format!("{}s", run_seconds.max(1)),
        "--throttle-requests".into(),
        load.rate_per_s.to_string(),
        "--timeout".into(),
        format!("{:.3}", load.request_timeout.as_secs_f64()),
        "--scenarios".into(),
        SUBMIT.into(),
        "--co-mitigation".into(),
        "disabled".into(),
        "--no-telnet".into(),
        "--quiet".into(),
        "--no-print-metrics".into(),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load() -> SubmitLoad {
        SubmitLoad {
            host: "http://127.0.0.1:8001".into(),
            rate_per_s: 200,
            duration: Duration::from_millis(2_500),
            users: 20,
            request_timeout: Duration::from_millis(1_500),
            run_id: "run".into(),
            follow_ups: FollowUps::default(),
            delays: Delays::default(),
            progress: None,
        }
    }

    fn value_of<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
        let position = args.iter().position(|arg| arg == flag)?;
        args.get(position + 1).map(String::as_str)
    }

    #[test]
    fn the_load_becomes_goose_options() {
        let args = goose_arguments(&load()).expect("a valid load");
        assert_eq!(value_of(&args, "--host"), Some("http://127.0.0.1:8001"));
        assert_eq!(value_of(&args, "--users"), Some("20"));
        assert_eq!(value_of(&args, "--throttle-requests"), Some("200"));
        assert_eq!(value_of(&args, "--run-time"), Some("3s"), "2.5 s rounds up");
        assert_eq!(value_of(&args, "--timeout"), Some("1.500"));
        assert_eq!(value_of(&args, "--scenarios"), Some("submit"));
        assert!(args.iter().any(|arg| arg == "--quiet"));
        assert!(args.iter().any(|arg| arg == "--no-print-metrics"));
    }

    #[test]
    fn goose_accepts_the_options() {
        let args = goose_arguments(&load()).expect("a valid load");
        let configuration = GooseConfiguration::parse_args_default(&args);
        assert!(configuration.is_ok(), "goose refused {args:?}");
    }

    #[test]
    fn a_sub_second_duration_runs_one_second() {
        let mut short = load();
        short.duration = Duration::from_millis(10);
        let args = goose_arguments(&short).expect("a valid load");
        assert_eq!(value_of(&args, "--run-time"), Some("1s"));
    }

    #[test]
    fn a_zero_rate_is_refused_rather_than_unthrottled() {
        let mut unthrottled = load();
        unthrottled.rate_per_s = 0;
        assert!(goose_arguments(&unthrottled).is_err());
    }

    #[test]
    fn zero_users_or_an_empty_run_id_are_refused() {
        let mut nobody = load();
        nobody.users = 0;
        assert!(goose_arguments(&nobody).is_err());
        let mut anonymous = load();
        anonymous.run_id.clear();
        assert!(goose_arguments(&anonymous).is_err());
    }
}
