//! The orchestrator binary's settings through the environment: old and new spelling of a renamed
//! setting together is an error, and no secret reaches `--help`. (Unit tests cannot set
//! environment variables: `unsafe_code` is forbidden.)

use std::process::{Command, Output};

fn orchestrator(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("running the orchestrator binary")
}

#[test]
fn old_and_new_name_together_is_a_usage_error_naming_both() {
    let output = orchestrator(
        &[],
        &[
            ("WORKER_DEAD_AFTER_MS", "3000"),
            ("WORKER_DEAD_AFTER", "3s"),
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("WORKER_DEAD_AFTER ") && stderr.contains("WORKER_DEAD_AFTER_MS"),
        "{stderr}"
    );
}

#[test]
fn help_shows_no_secret() {
    let output = orchestrator(
        &["--help"],
        &[
            ("REDIS_URL", "redis://agent:hunter2@redis:6379"),
            ("AUTH_TOKENS", "s3cr3t-api-token-0123"),
            ("METRICS_TOKEN", "s3cr3t-metrics-token-0123"),
        ],
    );
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{help}");
    for secret in ["hunter2", "s3cr3t"] {
        assert!(!help.contains(secret), "{secret}: {help}");
    }
    assert!(
        help.contains("[default: 1s]"),
        "the orchestrator's REDIS_TIMEOUT: {help}"
    );
}
