//! The goose scenarios: `submit`, `submit_and_wait` and `read_mostly`.
//!
//! Each scenario is built from a shared [`SubmitContext`], so every `POST /tasks` of a run
//! goes through [`submit_task`] with its own idempotency key. No scenario waits between
//! transactions: the pace is set by the number of users and by `--throttle-requests`.
//!
//! Goose derives a scenario's *machine name*, which `--scenarios` matches, by dropping every
//! character that is not a letter or digit: `submit_and_wait` becomes `submitandwait`.
//! [`resolve_scenario_aliases`] lets the documented names be typed as they are written.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use goose::config::GooseConfiguration;
use goose::prelude::*;
use rand::Rng;

use crate::follow_up::send_follow_up;
use crate::submit::{SubmitContext, submit_task};

/// POST /tasks as fast as users and throttle allow.
pub const SUBMIT: &str = "submit";
/// POST /tasks, then poll GET /tasks/{id} until the task is final.
pub const SUBMIT_AND_WAIT: &str = "submit_and_wait";
/// Mostly GET /tasks/{id} of the user's own tasks, some GET /stats, few POSTs.
pub const READ_MOSTLY: &str = "read_mostly";

/// The method label of the end-to-end latency metric, in goose's reports `E2E submit_and_wait`.
pub const END_TO_END_METHOD: &str = "E2E";

/// How long `submit_and_wait` polls one task before giving up on it.
pub const WAIT_DEADLINE: Duration = Duration::from_secs(30);

/// First and longest pause between two polls of one task. Polling starts fast so the
/// end-to-end latency of quick tasks is measured to a few milliseconds.
const FIRST_POLL_INTERVAL: Duration = Duration::from_millis(2);
const LONGEST_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Statuses after which a task never changes again.
const FINAL_STATUSES: [&str; 3] = ["succeeded", "dead", "cancelled"];

/// How many of its own task ids a `read_mostly` user remembers.
const REMEMBERED_TASKS: usize = 1_024;

/// Every scenario, registered on `attack`, all sharing `context`.
pub fn register_scenarios(
    attack: GooseAttack,
    context: &Arc<SubmitContext>,
) -> Result<GooseAttack, GooseError> {
    Ok(attack
        .register_scenario(submit_scenario(context))
        .register_scenario(submit_and_wait_scenario(context))
        .register_scenario(read_mostly_scenario(context)?))
}

/// The `submit` scenario: one transaction, `submit`.
pub fn submit_scenario(context: &Arc<SubmitContext>) -> Scenario {
    Scenario::new(SUBMIT).register_transaction(submit_transaction(context).set_name("submit"))
}

/// The `submit_and_wait` scenario: submit a task, poll it until it is final, and record the
/// end-to-end latency as the request `E2E submit_and_wait` (succeeded is a success; dead,
/// cancelled or not final within [`WAIT_DEADLINE`] a failure).
///
/// The latency runs from sending the POST to reading a final status, so it includes up to
/// one poll interval (2 ms doubling to 100 ms) and, under `--throttle-requests`, the time
/// polls wait for the throttle. A user finishes its current wait before the run ends, so a
/// stuck task can hold the end of a run back by up to [`WAIT_DEADLINE`].
pub fn submit_and_wait_scenario(context: &Arc<SubmitContext>) -> Scenario {
    let context = Arc::clone(context);
    let function: TransactionFunction = Arc::new(move |user| {
        let context = Arc::clone(&context);
        Box::pin(async move { submit_and_wait(user, &context).await })
    });
    Scenario::new(SUBMIT_AND_WAIT)
        .register_transaction(Transaction::new(function).set_name(SUBMIT_AND_WAIT))
}

/// The `read_mostly` scenario: per user and round, 16 reads of its own tasks, 3 reads of
/// `/stats` and 1 submit; a user that has no task yet submits one first.
pub fn read_mostly_scenario(context: &Arc<SubmitContext>) -> Result<Scenario, GooseError> {
    let remembering = Arc::clone(context);
    let submit_and_remember: TransactionFunction = Arc::new(move |user| {
        let context = Arc::clone(&remembering);
        Box::pin(async move {
            let acknowledged = submit_task(user, &context).await?;
            remember_task(user, acknowledged.task_id);
            Ok(())
        })
    });
    let reading = Arc::clone(context);
    let read_own_task: TransactionFunction = Arc::new(move |user| {
        let context = Arc::clone(&reading);
        Box::pin(async move { read_own_task(user, &context).await })
    });
    let read_stats: TransactionFunction = Arc::new(|user| Box::pin(read_stats(user)));

    Ok(Scenario::new(READ_MOSTLY)
        .register_transaction(
            Transaction::new(read_own_task)
                .set_name("read_own_task")
                .set_weight(16)?,
        )
        .register_transaction(
            Transaction::new(read_stats)
                .set_name("read_stats")
                .set_weight(3)?,
        )
        .register_transaction(Transaction::new(submit_and_remember).set_name("submit")))
}

/// A transaction that runs [`submit_task`] once.
fn submit_transaction(context: &Arc<SubmitContext>) -> Transaction {
    let context = Arc::clone(context);
    let function: TransactionFunction = Arc::new(move |user| {
        let context = Arc::clone(&context);
        Box::pin(async move {
            let acknowledged = submit_task(user, &context).await?;
            if let Some(kind) = context.follow_ups().pick(rand::random::<f64>()) {
                let record = send_follow_up(user, kind, &acknowledged.task_id).await?;
                context.record_follow_up(record);
            }
            Ok(())
        })
    });
    Transaction::new(function)
}

/// The `submit_and_wait` transaction.
async fn submit_and_wait(user: &mut GooseUser, context: &SubmitContext) -> TransactionResult {
    let acknowledged = submit_task(user, context).await?;
    let path = format!("/tasks/{}", acknowledged.task_id);
    let mut interval = FIRST_POLL_INTERVAL;
    loop {
        let status = get_task_status(user, &path).await?;
        let waited = acknowledged.sent_at.elapsed();
        if let Some(status) = status.filter(|s| FINAL_STATUSES.contains(&s.as_str())) {
            let succeeded = status == "succeeded";
            let error = format!("task ended {status}");
            user.record_custom_request_duration(
                END_TO_END_METHOD,
                SUBMIT_AND_WAIT,
                waited,
                succeeded,
                None,
                (!succeeded).then_some(error.as_str()),
            )
            .await?;
            return if succeeded { Ok(()) } else { Err(error.into()) };
        }
        if waited >= WAIT_DEADLINE {
            let error = format!(
                "task {} not final after {}s",
                acknowledged.task_id,
                WAIT_DEADLINE.as_secs()
            );
            user.record_custom_request_duration(
                END_TO_END_METHOD,
                SUBMIT_AND_WAIT,
                waited,
                false,
                None,
                Some(&error),
            )
            .await?;
            return Err(error.into());
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(LONGEST_POLL_INTERVAL);
    }
}

/// GET one of the user's own tasks (or submit one if it has none yet).
async fn read_own_task(user: &mut GooseUser, context: &SubmitContext) -> TransactionResult {
    let task_id = user.get_session_data::<OwnTasks>().and_then(|own| {
        // ThreadRng is not Send; it is dropped before the await below.
        let index = rand::rng().random_range(0..own.task_ids.len().max(1));
        own.task_ids.get(index).cloned()
    });
    match task_id {
        Some(task_id) => get_task_status(user, &format!("/tasks/{task_id}"))
            .await
            .map(|_| ()),
        None => {
            let acknowledged = submit_task(user, context).await?;
            remember_task(user, acknowledged.task_id);
            Ok(())
        }
    }
}

/// GET /stats.
async fn read_stats(user: &mut GooseUser) -> TransactionResult {
    let request = GooseRequest::builder()
        .method(GooseMethod::Get)
        .path("/stats")
        .error_on_fail()
        .build();
    user.request(request).await.map(|_| ())
}

/// GET a task and return its status; any non-2xx fails the request and the transaction.
///
/// All task reads are counted under one name, `/tasks/{id}`, not one row per task.
async fn get_task_status(
    user: &mut GooseUser,
    path: &str,
) -> Result<Option<String>, Box<TransactionError>> {
    let request = GooseRequest::builder()
        .method(GooseMethod::Get)
        .path(path)
        .name("/tasks/{id}")
        .error_on_fail()
        .build();
    let mut goose = user.request(request).await?;
    let body = match goose.response {
        Ok(response) => response.bytes().await,
        // A transport error; `error_on_fail` already returned for it, this is defensive.
        Err(error) => return Err(Box::new(TransactionError::Reqwest(error))),
    };
    let status = body.ok().and_then(|body| {
        let value: serde_json::Value = serde_json::from_slice(&body).ok()?;
        value.get("status")?.as_str().map(str::to_owned)
    });
    if status.is_none() {
        user.set_failure(
            "task record without a status",
            &mut goose.request,
            None,
            None,
        )?;
    }
    Ok(status)
}

/// The ids of tasks a user created, newest last, at most [`REMEMBERED_TASKS`].
#[derive(Debug, Clone, Default)]
struct OwnTasks {
    task_ids: VecDeque<String>,
}

fn remember_task(user: &mut GooseUser, task_id: String) {
    if user.get_session_data::<OwnTasks>().is_none() {
        user.set_session_data(OwnTasks::default());
    }
    if let Some(own) = user.get_session_data_mut::<OwnTasks>() {
        if own.task_ids.len() == REMEMBERED_TASKS {
            own.task_ids.pop_front();
        }
        own.task_ids.push_back(task_id);
    }
}

/// Maps the documented scenario names in `--scenarios` to goose's machine names
/// (`submit_and_wait` → `submitandwait`, `read_mostly` → `readmostly`); anything else is
/// left for goose to match.
pub fn resolve_scenario_aliases(configuration: &mut GooseConfiguration) {
    if let Some(scenarios) = configuration.scenarios.as_mut() {
        for pattern in &mut scenarios.active {
            if [SUBMIT, SUBMIT_AND_WAIT, READ_MOSTLY].contains(&pattern.as_str()) {
                pattern.retain(|c| c != '_');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> GooseConfiguration {
        GooseConfiguration::parse_args_default(args).expect("valid goose arguments")
    }

    #[test]
    fn documented_scenario_names_select_goose_machine_names() {
        let mut configuration = parse(&["--scenarios", "submit_and_wait,read_mostly,submit"]);
        resolve_scenario_aliases(&mut configuration);
        let active = configuration
            .scenarios
            .map(|s| s.active)
            .unwrap_or_default();
        assert_eq!(active, vec!["submitandwait", "readmostly", "submit"]);
    }

    #[test]
    fn other_scenario_patterns_are_left_alone() {
        let mut configuration = parse(&["--scenarios", "submit*,name_1"]);
        resolve_scenario_aliases(&mut configuration);
        let active = configuration
            .scenarios
            .map(|s| s.active)
            .unwrap_or_default();
        assert_eq!(active, vec!["submit*", "name_1"]);
    }

    #[test]
    fn scenario_machine_names_are_what_the_aliases_produce() {
        let context = Arc::new(SubmitContext::not_recording("run"));
        let names: Vec<String> = [
            submit_scenario(&context),
            submit_and_wait_scenario(&context),
            read_mostly_scenario(&context).expect("constant weights are valid"),
        ]
        .iter()
        .map(|s| s.machine_name.to_string())
        .collect();
        assert_eq!(names, vec!["submit", "submitandwait", "readmostly"]);
    }
}
