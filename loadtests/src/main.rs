//! `loadtest`: the goose scenarios of the `loadtests` crate behind goose's own command line.
//!
//! See the crate documentation for the scenarios and example commands; `loadtest --help`
//! lists every option.

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::Context;
use goose::GooseAttack;
use goose::config::GooseConfiguration;
use loadtests::scenarios::{register_scenarios, resolve_scenario_aliases};
use loadtests::submit::SubmitContext;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Goose parses the whole command line (and handles --help and --version itself).
    let mut configuration = GooseConfiguration::parse_args_default_or_exit();
    resolve_scenario_aliases(&mut configuration);
    // Progress on a terminal: goose's running metrics every 10 s unless asked otherwise.
    if configuration.running_metrics.is_none() && std::io::stdout().is_terminal() {
        configuration.running_metrics = Some(10);
    }

    // A fresh run id per process, so idempotency keys never replay an earlier run's task.
    let run_id = format!("loadtest-{}", uuid::Uuid::new_v4().simple());
    let context = Arc::new(SubmitContext::not_recording(run_id));

    let attack =
        GooseAttack::initialize_with_config(configuration).context("initialising goose")?;
    register_scenarios(attack, &context)
        .context("registering scenarios")?
        .execute()
        .await
        .context("load test failed")?;
    Ok(())
}
