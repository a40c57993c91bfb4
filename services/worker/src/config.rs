//! Configuration: command-line flags with environment fallbacks (names as in DESIGN.md).

use std::net::SocketAddr;
use std::time::Duration;

use taskq::support::{LogFormat, RedisSettings, parse_millis};
use taskq::{Keys, QueueConfig};

/// Which built-in handler executes tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HandlerKind {
    /// Holds each task `WORKER_WORK_MS`, optionally failing a share of executions.
    Simulate,
    /// POSTs each task to `AGENT_URL` and stores the answer.
    Http,
}

/// Worker settings.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "worker", version, about = "Agent System worker")]
pub struct Config {
    /// Optional subcommand; without one the worker runs.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Redis URL, `redis://[user:password@]host:port[/db]`.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// Prefix of every Redis key (must match the orchestrator's).
    #[arg(long, env = "KEY_PREFIX", default_value = "agent")]
    pub key_prefix: String,

    /// This worker's consumer name; default: host name, process id and a random suffix.
    #[arg(long, env = "WORKER_ID")]
    pub worker_id: Option<String>,

    /// Tasks executed at once.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,

    /// Which handler executes tasks.
    #[arg(long, env = "WORKER_HANDLER", value_enum, default_value_t = HandlerKind::Simulate)]
    pub handler: HandlerKind,

    /// Simulated work per task, in milliseconds (`simulate` handler).
    #[arg(long, env = "WORKER_WORK_MS", default_value = "100", value_parser = parse_millis)]
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

    /// Timeout of one call to the agent endpoint, in milliseconds.
    #[arg(long, env = "AGENT_TIMEOUT_MS", default_value = "30000", value_parser = parse_millis)]
    pub agent_timeout: Duration,

    /// First retry delay, in milliseconds; doubles per attempt.
    #[arg(long, env = "RETRY_BASE_MS", default_value = "500", value_parser = parse_millis)]
    pub retry_base: Duration,

    /// Longest retry delay, in milliseconds.
    #[arg(long, env = "RETRY_MAX_MS", default_value = "60000", value_parser = parse_millis)]
    pub retry_max: Duration,

    /// Heartbeat period, in milliseconds.
    #[arg(long, env = "WORKER_HEARTBEAT_MS", default_value = "1000", value_parser = parse_millis)]
    pub heartbeat: Duration,

    /// A worker whose heartbeat is older than this is dead and its tasks are reclaimed.
    #[arg(long, env = "WORKER_DEAD_AFTER_MS", default_value = "3000", value_parser = parse_millis)]
    pub dead_after: Duration,

    /// Entries idle longer than this with no live owner are reclaimed; running tasks renew it.
    #[arg(long, env = "WORKER_LEASE_MS", default_value = "30000", value_parser = parse_millis)]
    pub lease: Duration,

    /// After SIGTERM, how long in-flight tasks may finish before the worker exits.
    #[arg(long, env = "WORKER_SHUTDOWN_GRACE_MS", default_value = "10000", value_parser = parse_millis)]
    pub shutdown_grace: Duration,

    /// Longest wait for one Redis reply, in milliseconds.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value = "2000", value_parser = parse_millis)]
    pub redis_timeout: Duration,

    /// How long finished tasks are kept (same setting as the orchestrator's; `0s` keeps them).
    #[arg(long, env = "TASK_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub task_retention: Duration,

    /// Where `/healthz` and `/metrics` are served.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9000")]
    pub metrics_addr: SocketAddr,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,
}

/// Subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Exit 0 when the local worker answers `/healthz` (for container health checks).
    Healthcheck,
}

impl Config {
    /// Defaults for tests: metrics on an ephemeral loopback port, fast heartbeats.
    pub fn for_tests(redis_url: &str, key_prefix: &str) -> Self {
        use clap::Parser;
        let mut config = Self::parse_from(["worker"]);
        config.redis_url = redis_url.to_owned();
        config.key_prefix = key_prefix.to_owned();
        config.metrics_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        config.work = Duration::from_millis(10);
        config.retry_base = Duration::from_millis(50);
        config.retry_max = Duration::from_millis(500);
        config.heartbeat = Duration::from_millis(250);
        config.dead_after = Duration::from_millis(1000);
        config
    }

    /// The queue settings (attempts are set per task by the orchestrator).
    pub fn queue_config(&self) -> QueueConfig {
        QueueConfig {
            keys: Keys::new(self.key_prefix.clone()),
            task_retention: self.task_retention,
            ..QueueConfig::default()
        }
    }

    /// The Redis connection settings.
    pub fn redis_settings(&self) -> RedisSettings {
        RedisSettings {
            url: self.redis_url.clone(),
            connect_timeout: self.redis_timeout,
            response_timeout: self.redis_timeout,
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
            self.dead_after > self.heartbeat,
            "WORKER_DEAD_AFTER_MS must be longer than WORKER_HEARTBEAT_MS"
        );
        Ok(())
    }
}
