//! Configuration: command-line flags with environment fallbacks (names as in the README's
//! configuration table). The Redis settings and `WORKER_DEAD_AFTER` are the groups shared with
//! the orchestrator ([`taskq::support`]); durations are humantime (`1s`, `500ms`).

use std::net::SocketAddr;
use std::time::Duration;

use taskq::support::{Deprecated, LivenessArgs, RedisArgs, Renamed};
use taskq::{Keys, QueueConfig};

/// Which built-in handler executes tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HandlerKind {
    /// Holds each task `WORKER_WORK`, optionally failing a share of executions.
    Simulate,
    /// POSTs each task to `AGENT_URL` and stores the answer.
    Http,
}

/// Worker settings. `Debug` shows no secret: the Redis URL is a `SecretString`.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "worker", version, about = "Agent System worker")]
pub struct Config {
    /// Optional subcommand; without one the worker runs.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// `REDIS_URL`, `KEY_PREFIX` (must match the orchestrator's), `REDIS_TIMEOUT` (here: longest
    /// wait for one Redis reply, default 2s) and `LOG_FORMAT`.
    #[command(flatten)]
    pub redis: RedisArgs,

    /// This worker's consumer name; default: host name, process id and a random suffix.
    #[arg(long, env = "WORKER_ID")]
    pub worker_id: Option<String>,

    /// Tasks executed at once.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,

    /// Threads of the async runtime that runs the executions and the worker's loops: 1 (the
    /// default) runs everything on one thread, with no wake-ups across threads, the fastest for
    /// handlers that wait (the `simulate` and `http` handlers); more for a handler that computes
    /// between its awaits. A handler that blocks should use `spawn_blocking` either way.
    #[arg(long, env = "WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,

    /// Which handler executes tasks.
    #[arg(long, env = "WORKER_HANDLER", value_enum, default_value_t = HandlerKind::Simulate)]
    pub handler: HandlerKind,

    /// Simulated work per task (`simulate` handler).
    #[arg(long = "worker-work", env = "WORKER_WORK", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub work: Duration,

    /// Share of executions that fail transiently, 0.0–1.0 (`simulate` handler, for tests).
    #[arg(long, env = "WORKER_FAIL_RATE", default_value_t = 0.0)]
    pub fail_rate: f64,

    /// Share of executions that fail permanently, 0.0–1.0 (`simulate` handler, for tests).
    #[arg(long, env = "WORKER_PERMANENT_FAIL_RATE", default_value_t = 0.0)]
    pub permanent_fail_rate: f64,

    /// Attempts 1..=N of every task fail transiently (`simulate` handler, for tests).
    #[arg(long, env = "WORKER_FAIL_FIRST_ATTEMPTS", default_value_t = 0)]
    pub fail_first_attempts: u32,

    /// Agent endpoint the `http` handler POSTs tasks to.
    #[arg(long, env = "AGENT_URL")]
    pub agent_url: Option<String>,

    /// Timeout of one call to the agent endpoint.
    #[arg(long, env = "AGENT_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub agent_timeout: Duration,

    /// First retry delay; doubles per attempt.
    #[arg(long, env = "RETRY_BASE", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub retry_base: Duration,

    /// Longest retry delay.
    #[arg(long, env = "RETRY_MAX", default_value = "60s", value_parser = humantime::parse_duration)]
    pub retry_max: Duration,

    /// Heartbeat period.
    #[arg(long = "worker-heartbeat", env = "WORKER_HEARTBEAT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,

    /// `WORKER_DEAD_AFTER`: a worker whose heartbeat is older is dead and its tasks are
    /// reclaimed.
    #[command(flatten)]
    pub liveness: LivenessArgs,

    /// Entries idle longer than this with no live owner are reclaimed; running tasks renew it.
    #[arg(long = "worker-lease", env = "WORKER_LEASE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub lease: Duration,

    /// After SIGTERM, how long in-flight tasks may finish before the worker exits. Executions
    /// still running then are stopped and recorded as interrupted: their tasks run again at
    /// once, with the attempt given back.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Execution deadline of a task that sets no `timeout_ms`: an execution still running then is
    /// stopped and counts as a transient failure (retried while attempts remain).
    #[arg(long, env = "TASK_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub task_timeout: Duration,

    /// How long finished tasks are kept (same setting as the orchestrator's; `0s` keeps them).
    #[arg(long, env = "TASK_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub task_retention: Duration,

    /// Where `/healthz` and `/metrics` are served.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9000")]
    pub metrics_addr: SocketAddr,
}

/// The worker's default `REDIS_TIMEOUT`: the longest wait for one Redis reply.
pub const REDIS_TIMEOUT_DEFAULT: &str = "2s";

/// Settings renamed from a `*_MS` spelling (whole milliseconds) that still work, with a warning,
/// for one release. The worker's old flags that took milliseconds (`--work`, `--heartbeat`,
/// `--dead-after`, `--lease`) are kept as aliases where the new flag has another name.
pub const RENAMED: &[Renamed<Config>] = &[
    Renamed {
        id: "work",
        old_env: "WORKER_WORK_MS",
        old_flags: &["worker-work-ms", "work"],
        field: |c| &mut c.work,
    },
    Renamed {
        id: "agent_timeout",
        old_env: "AGENT_TIMEOUT_MS",
        old_flags: &["agent-timeout-ms"],
        field: |c| &mut c.agent_timeout,
    },
    Renamed {
        id: "retry_base",
        old_env: "RETRY_BASE_MS",
        old_flags: &["retry-base-ms"],
        field: |c| &mut c.retry_base,
    },
    Renamed {
        id: "retry_max",
        old_env: "RETRY_MAX_MS",
        old_flags: &["retry-max-ms"],
        field: |c| &mut c.retry_max,
    },
    Renamed {
        id: "heartbeat",
        old_env: "WORKER_HEARTBEAT_MS",
        old_flags: &["worker-heartbeat-ms", "heartbeat"],
        field: |c| &mut c.heartbeat,
    },
    Renamed {
        id: "worker_dead_after",
        old_env: "WORKER_DEAD_AFTER_MS",
        old_flags: &["worker-dead-after-ms", "dead-after"],
        field: |c| &mut c.liveness.worker_dead_after,
    },
    Renamed {
        id: "lease",
        old_env: "WORKER_LEASE_MS",
        old_flags: &["worker-lease-ms", "lease"],
        field: |c| &mut c.lease,
    },
    Renamed {
        id: "shutdown_grace",
        old_env: "WORKER_SHUTDOWN_GRACE_MS",
        old_flags: &["worker-shutdown-grace-ms"],
        field: |c| &mut c.shutdown_grace,
    },
    Renamed {
        id: "redis_timeout",
        old_env: "REDIS_TIMEOUT_MS",
        old_flags: &["redis-timeout-ms"],
        field: |c| &mut c.redis.redis_timeout,
    },
];

/// Subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Exit 0 when the local worker answers `/healthz` (for container health checks).
    Healthcheck,
}

impl Config {
    /// The settings from the command line and the environment; on an error (or `--help`) prints
    /// it and exits, like `clap::Parser::parse`. Also returns the deprecated names that were
    /// used, for [`taskq::support::warn_deprecated`] once logging is set up.
    pub fn load() -> (Self, Vec<Deprecated>) {
        Self::try_load_from(std::env::args_os()).unwrap_or_else(|err| err.exit())
    }

    /// [`Config::load`] from `args` (the first is the program name) and the environment.
    pub fn try_load_from(
        args: impl IntoIterator<Item = impl Into<std::ffi::OsString> + Clone>,
    ) -> Result<(Self, Vec<Deprecated>), clap::Error> {
        taskq::support::parse_config(
            args,
            |command| RedisArgs::with_timeout_default(command, REDIS_TIMEOUT_DEFAULT),
            RENAMED,
        )
    }

    /// Defaults for tests: metrics on an ephemeral loopback port, fast heartbeats.
    pub fn for_tests(redis_url: &str, key_prefix: &str) -> Self {
        let (mut config, _) = Self::try_load_from(["worker"]).expect("the defaults parse");
        config.redis.redis_url = redis_url.into();
        config.redis.key_prefix = key_prefix.to_owned();
        config.metrics_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        config.work = Duration::from_millis(10);
        config.retry_base = Duration::from_millis(50);
        config.retry_max = Duration::from_millis(500);
        config.heartbeat = Duration::from_millis(250);
        config.liveness.worker_dead_after = Duration::from_millis(1000);
        config
    }

    /// The queue settings (attempts are set per task by the orchestrator).
    pub fn queue_config(&self) -> QueueConfig {
        QueueConfig {
            keys: Keys::new(self.redis.key_prefix.clone()),
            task_retention: self.task_retention,
            ..QueueConfig::default()
        }
    }

    /// The consumer name: `WORKER_ID`, or host name, process id and a random suffix.
    pub fn resolved_worker_id(&self) -> String {
        self.worker_id.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME")
                .ok()
                .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "worker".to_owned());
            format!(
                "{host}-{}-{:04x}",
                std::process::id(),
                rand::random::<u16>()
            )
        })
    }

    /// Rejects settings that parse but make no sense.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (name, rate) in [
            ("WORKER_FAIL_RATE", self.fail_rate),
            ("WORKER_PERMANENT_FAIL_RATE", self.permanent_fail_rate),
        ] {
            anyhow::ensure!(
                (0.0..=1.0).contains(&rate),
                "{name} must be between 0.0 and 1.0, got {rate}"
            );
        }
        if self.handler == HandlerKind::Http {
            let url = self.agent_url.as_deref().unwrap_or_default();
            anyhow::ensure!(
                url.starts_with("http://") || url.starts_with("https://"),
                "WORKER_HANDLER=http needs AGENT_URL=http://host:port/path, got {url:?}"
            );
        }
        anyhow::ensure!(
            self.liveness.worker_dead_after > self.heartbeat,
            "WORKER_DEAD_AFTER must be longer than WORKER_HEARTBEAT"
        );
        let max_timeout = Duration::from_millis(taskq::model::MAX_TIMEOUT_MS);
        anyhow::ensure!(
            !self.task_timeout.is_zero() && self.task_timeout <= max_timeout,
            "TASK_TIMEOUT must be from 1ms to 1day, got {}",
            humantime::format_duration(self.task_timeout)
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn load(args: &[&str]) -> Result<(Config, Vec<Deprecated>), clap::Error> {
        Config::try_load_from(std::iter::once("worker").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_are_unchanged() {
        let (config, deprecated) = load(&[]).expect("defaults parse");
        assert!(deprecated.is_empty());
        let ms = Duration::from_millis;
        assert_eq!(config.work, ms(100));
        assert_eq!(config.threads, 1);
        assert_eq!(config.agent_timeout, ms(30_000));
        assert_eq!(config.retry_base, ms(500));
        assert_eq!(config.retry_max, ms(60_000));
        assert_eq!(config.heartbeat, ms(1000));
        assert_eq!(config.liveness.worker_dead_after, ms(3000));
        assert_eq!(config.lease, ms(30_000));
        assert_eq!(config.shutdown_grace, ms(10_000));
        assert_eq!(config.task_timeout, ms(300_000));
        assert_eq!(config.redis.redis_timeout, ms(2000));
        assert_eq!(config.redis.key_prefix, "agent");
        config.validate().expect("the defaults are valid");
    }

    #[test]
    fn every_old_ms_spelling_still_works_with_a_warning() {
        for renamed in RENAMED {
            for old_flag in renamed.old_flags {
                let flag = format!("--{old_flag}");
                let (mut config, deprecated) =
                    load(&[&flag, "1234"]).unwrap_or_else(|e| panic!("{flag}: {e}"));
                assert_eq!(
                    *(renamed.field)(&mut config),
                    Duration::from_millis(1234),
                    "{flag}"
                );
                assert_eq!(deprecated.len(), 1, "{flag}");
                assert_eq!(deprecated[0].old, renamed.old_env);
                let expected_new = match renamed.old_env {
                    "WORKER_SHUTDOWN_GRACE_MS" => "SHUTDOWN_GRACE",
                    old => old.strip_suffix("_MS").expect("old names end in _MS"),
                };
                assert_eq!(deprecated[0].new, expected_new);
                assert_eq!(
                    deprecated[0].to_string(),
                    format!(
                        "{} is deprecated, use {expected_new}=1s 234ms",
                        renamed.old_env
                    )
                );
            }
        }
    }

    #[test]
    fn old_and_new_spelling_together_is_an_error_naming_both() {
        let err = load(&[
            "--shutdown-grace",
            "5s",
            "--worker-shutdown-grace-ms",
            "5000",
        ])
        .expect_err("both spellings");
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        let message = err.to_string();
        assert!(
            message.contains("SHUTDOWN_GRACE ") && message.contains("WORKER_SHUTDOWN_GRACE_MS"),
            "{message}"
        );
    }

    #[test]
    fn debug_output_carries_no_secret() {
        let (mut config, _) = load(&[]).expect("defaults parse");
        config.redis.redis_url = "redis://agent:hunter2@redis:6379".into();
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
    }
}
