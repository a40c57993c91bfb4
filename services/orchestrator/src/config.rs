//! Configuration: command-line flags with environment fallbacks (names as in DESIGN.md).

use std::net::SocketAddr;
use std::time::Duration;

use taskq::support::{LogFormat, RedisSettings};
use taskq::{Keys, QueueConfig};

/// Orchestrator settings.
#[derive(Clone, clap::Parser)]
#[command(name = "orchestrator", version, about = "Agent System HTTP API")]
pub struct Config {
    /// Optional subcommand; without one the server runs.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Redis URL, `redis://[user:password@]host:port[/db]`.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// Address to listen on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8000")]
    pub listen_addr: SocketAddr,

    /// Prefix of every Redis key (isolates systems sharing one Redis).
    #[arg(long, env = "KEY_PREFIX", default_value = "agent")]
    pub key_prefix: String,

    /// Longest time one Redis call may take before the request gets 503.
    #[arg(long, env = "REDIS_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub redis_timeout: Duration,

    /// Longest time one request may take.
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// Executions allowed per task before it is dead-lettered.
    #[arg(long, env = "MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,

    /// How long finished tasks are kept.
    #[arg(long, env = "TASK_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub task_retention: Duration,

    /// How long an `Idempotency-Key` is remembered.
    #[arg(long, env = "IDEMPOTENCY_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub idempotency_ttl: Duration,

    /// A worker whose heartbeat is older than this counts as gone in `/stats`.
    #[arg(long = "worker-dead-after-ms", env = "WORKER_DEAD_AFTER_MS", default_value = "3000", value_parser = taskq::support::parse_millis)]
    pub worker_dead_after: Duration,

    /// How long in-flight requests may finish after SIGTERM.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,

    /// Bearer tokens for the task routes, comma-separated (none: no authentication).
    #[arg(long, env = "AUTH_TOKENS", hide_env_values = true)]
    pub auth_tokens: Option<String>,

    /// File with one bearer token per line, added to `AUTH_TOKENS`.
    #[arg(long, env = "AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<std::path::PathBuf>,

    /// Bearer token required by `/metrics` (none: open).
    #[arg(long, env = "METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,

    /// `POST /tasks` allowed per client and second (0: no limit).
    #[arg(long, env = "RATE_LIMIT_PER_S", default_value_t = 0)]
    pub rate_limit_per_s: u32,

    /// Burst allowed above the rate (default: one second's worth).
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 0)]
    pub rate_limit_burst: u32,

    /// Requests handled at once; beyond it requests get 503 at once instead of queueing.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 4096)]
    pub max_concurrent_requests: usize,

    /// Tasks waiting (queued or running) beyond which `POST /tasks` gets 503 `queue_full`
    /// (0: no limit).
    #[arg(long, env = "MAX_QUEUED", default_value_t = taskq::queue::DEFAULT_MAX_QUEUED)]
    pub max_queued: u64,
}

impl std::fmt::Debug for Config {
    // By hand: the Redis URL may hold a password and the tokens are secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("redis_url", &taskq::support::redact_url(&self.redis_url))
            .field("listen_addr", &self.listen_addr)
            .field("key_prefix", &self.key_prefix)
            .field(
                "auth",
                &(self.auth_tokens.is_some() || self.auth_tokens_file.is_some()),
            )
            .field("metrics_token", &self.metrics_token.is_some())
            .field("rate_limit_per_s", &self.rate_limit_per_s)
            .finish_non_exhaustive()
    }
}

/// Subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Exit 0 when the local server answers `/healthz` (for container health checks).
    Healthcheck,
}

impl Config {
    /// Defaults for tests: listen on an ephemeral loopback port.
    pub fn for_tests(redis_url: &str, key_prefix: &str) -> Self {
        use clap::Parser;
        let mut config = Self::parse_from(["orchestrator"]);
        config.redis_url = redis_url.to_owned();
        config.key_prefix = key_prefix.to_owned();
        config.listen_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        config
    }

    /// The queue settings.
    pub fn queue_config(&self) -> QueueConfig {
        QueueConfig {
            keys: Keys::new(self.key_prefix.clone()),
            task_retention: self.task_retention,
            idempotency_ttl: self.idempotency_ttl,
            max_attempts: self.max_attempts,
            max_queued: self.max_queued,
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
}
