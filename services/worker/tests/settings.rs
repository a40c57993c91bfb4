//! The worker binary's settings through the environment, the way deployments give them: the old
//! `*_MS` names still work with a warning, old and new together is an error, and no secret
//! reaches `--help`. (Unit tests cannot set environment variables: `unsafe_code` is forbidden.)

use std::process::{Command, Output};

/// Runs the worker binary with only `env` set and its stdin closed.
fn worker(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_worker"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("running the worker binary")
}

#[test]
fn a_deprecated_ms_variable_still_applies_and_is_warned_about() {
    // WORKER_HEARTBEAT_MS=5000 makes the heartbeat longer than WORKER_DEAD_AFTER (3s), which
    // the worker refuses before it connects: proof the old name took effect, without Redis.
    let output = worker(
        &[],
        &[
            ("WORKER_HEARTBEAT_MS", "5000"),
            ("REDIS_URL", "redis://127.0.0.1:1"),
            ("METRICS_ADDR", "127.0.0.1:0"),
            ("LOG_FORMAT", "text"),
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("WORKER_HEARTBEAT_MS is deprecated, use WORKER_HEARTBEAT=5s"),
        "{stdout}"
    );
    assert!(
        stderr.contains("WORKER_DEAD_AFTER must be longer than WORKER_HEARTBEAT"),
        "{stderr}"
    );
}

#[test]
fn old_and_new_name_together_is_a_usage_error_naming_both() {
    let output = worker(&[], &[("WORKER_WORK_MS", "100"), ("WORKER_WORK", "100ms")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("WORKER_WORK ") && stderr.contains("WORKER_WORK_MS"),
        "{stderr}"
    );
}

#[test]
fn help_shows_no_secret_and_no_deprecated_name() {
    let output = worker(
        &["--help"],
        &[("REDIS_URL", "redis://agent:hunter2@redis:6379")],
    );
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{help}");
    assert!(
        help.contains("REDIS_URL") && help.contains("WORKER_HEARTBEAT"),
        "{help}"
    );
    assert!(!help.contains("hunter2"), "{help}");
    assert!(!help.contains("_MS"), "{help}");
    assert!(
        help.contains("[default: 2s]"),
        "the worker's REDIS_TIMEOUT: {help}"
    );
}
