//! Configuration: command-line flags with environment fallbacks (names as in the README's
//! configuration table). The Redis settings and `WORKER_DEAD_AFTER` are the groups shared with
//! the worker ([`taskq::support`]); durations are humantime (`1s`, `500ms`).

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;
use taskq::support::{Deprecated, LivenessArgs, RedisArgs, Renamed};
use taskq::{Keys, QueueConfig};

/// Orchestrator settings. `Debug` shows no secret: the Redis URL and the tokens are
/// [`SecretString`]s.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "orchestrator", version, about = "Agent System HTTP API")]
pub struct Config {
    /// Optional subcommand; without one the server runs.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// `REDIS_URL`, `KEY_PREFIX`, `REDIS_TIMEOUT` (here: longest Redis call before a 503,
    /// default 1s) and `LOG_FORMAT`.
    #[command(flatten)]
    pub redis: RedisArgs,

    /// Address to listen on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8000")]
    pub listen_addr: SocketAddr,

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

    /// `WORKER_DEAD_AFTER`: a worker whose heartbeat is older counts as gone in `/stats`.
    #[command(flatten)]
    pub liveness: LivenessArgs,

    /// How long in-flight requests may finish after SIGTERM.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Bearer tokens for the task routes, comma-separated (none: no authentication).
    #[arg(long, env = "AUTH_TOKENS", hide_env_values = true)]
    pub auth_tokens: Option<SecretString>,

    /// File with one bearer token per line, added to `AUTH_TOKENS`.
    #[arg(long, env = "AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<std::path::PathBuf>,

    /// Bearer token required by `/metrics` (none: open).
    #[arg(long, env = "METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<SecretString>,

    /// `POST /tasks` allowed per client and second (0: no limit).
    #[arg(long, env = "RATE_LIMIT_PER_S", default_value_t = 0)]
    pub rate_limit_per_s: u32,

    /// Burst allowed above the rate (default: one second's worth).
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 0)]
    pub rate_limit_burst: u32,

    /// Threads of the async runtime that serves the API (default: one per core). 1 serves every
    /// connection on one thread, with no wake-ups across threads: less CPU per request, but one
    /// core at most (docs/benchmarks.md, "POST /tasks").
    #[arg(long, env = "ORCHESTRATOR_THREADS", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: Option<u16>,

    /// Requests handled at once; beyond it requests get 503 at once instead of queueing.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 4096)]
    pub max_concurrent_requests: usize,

    /// Tasks waiting (queued or running) beyond which `POST /tasks` gets 503 `queue_full`
    /// (0: no limit).
    #[arg(long, env = "MAX_QUEUED", default_value_t = taskq::queue::DEFAULT_MAX_QUEUED)]
    pub max_queued: u64,

    /// Replicas that must confirm each write the API answers (submit, cancel, retry, pause)
    /// before the answer (`WAIT`, at most half of `REDIS_TIMEOUT`); fewer in time: 503
    /// `outcome_unknown`. 0: answer once the primary has it.
    #[arg(long, env = "REPLICA_ACKS", default_value_t = 0)]
    pub replica_acks: u32,
}

/// The orchestrator's default `REDIS_TIMEOUT`: a request waits at most this for Redis, then 503.
pub const REDIS_TIMEOUT_DEFAULT: &str = "1s";

/// Settings renamed from a `*_MS` spelling that still work, with a warning, for one release.
pub const RENAMED: &[Renamed<Config>] = &[Renamed {
    id: "worker_dead_after",
    old_env: "WORKER_DEAD_AFTER_MS",
    old_flags: &["worker-dead-after-ms"],
    field: |c| &mut c.liveness.worker_dead_after,
}];

/// Subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Exit 0 when the local server answers `/healthz` (for container health checks).
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

    /// Defaults for tests: listen on an ephemeral loopback port.
    pub fn for_tests(redis_url: &str, key_prefix: &str) -> Self {
        let (mut config, _) = Self::try_load_from(["orchestrator"]).expect("the defaults parse");
        config.redis.redis_url = redis_url.into();
        config.redis.key_prefix = key_prefix.to_owned();
        config.listen_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        config
    }

    /// The queue settings.
    pub fn queue_config(&self) -> QueueConfig {
        QueueConfig {
            keys: Keys::new(self.redis.key_prefix.clone()),
            task_retention: self.task_retention,
            idempotency_ttl: self.idempotency_ttl,
            max_attempts: self.max_attempts,
            max_queued: self.max_queued,
            ..QueueConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn load(args: &[&str]) -> Result<(Config, Vec<Deprecated>), clap::Error> {
        Config::try_load_from(std::iter::once("orchestrator").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_are_unchanged() {
        let (config, deprecated) = load(&[]).expect("defaults parse");
        assert!(deprecated.is_empty());
        assert_eq!(config.redis.redis_timeout, Duration::from_secs(1));
        assert_eq!(config.liveness.worker_dead_after, Duration::from_secs(3));
        assert_eq!(config.shutdown_grace, Duration::from_secs(10));
        assert_eq!(config.redis.key_prefix, "agent");
        assert_eq!(config.threads, None, "one thread per core");
    }

    #[test]
    fn a_thread_count_out_of_range_is_refused_with_its_bounds() {
        assert_eq!(
            load(&["--threads", "4"]).expect("in range").0.threads,
            Some(4)
        );
        for bad in ["0", "257", "two"] {
            let err = load(&["--threads", bad]).expect_err(bad);
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{bad}");
            assert!(err.to_string().contains("--threads"), "{err}");
        }
    }

    #[test]
    fn every_old_ms_spelling_still_works_with_a_warning() {
        for renamed in RENAMED {
            let flag = format!("--{}", renamed.old_flags[0]);
            let (mut config, deprecated) = load(&[&flag, "1234"]).expect("old spelling parses");
            assert_eq!(*(renamed.field)(&mut config), Duration::from_millis(1234));
            assert_eq!(deprecated.len(), 1);
            assert_eq!(deprecated[0].old, renamed.old_env);
            assert_eq!(
                format!("{}_MS", deprecated[0].new),
                renamed.old_env,
                "the new name is the old one without _MS"
            );
        }
        let err = load(&[
            "--worker-dead-after",
            "3s",
            "--worker-dead-after-ms",
            "3000",
        ])
        .expect_err("both spellings");
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn debug_output_carries_no_secret() {
        let (mut config, _) = load(&[]).expect("defaults parse");
        config.redis.redis_url = "redis://agent:hunter2@redis:6379".into();
        config.auth_tokens = Some("api-token-secret".into());
        config.metrics_token = Some("metrics-token-secret".into());
        let debug = format!("{config:?}");
        for secret in ["hunter2", "api-token-secret", "metrics-token-secret"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
    }
}
