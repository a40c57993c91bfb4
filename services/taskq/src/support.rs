//! Process support shared by the services: the settings both take ([`RedisArgs`],
//! [`LivenessArgs`], renamed settings), the async runtime, logging set-up, the Prometheus
//! recorder and Redis connection settings.
//!
//! Not part of the protocol, but both binaries need the same behaviour here (setting names, log
//! format, URL redaction, reconnect policy), so it lives in one place.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::{ExposeSecret, SecretString};
use tracing_subscriber::EnvFilter;

/// The Redis settings of both services, flattened into each one's `Config`
/// (`#[command(flatten)]`): one declaration, so the names and their parsing cannot drift apart.
///
/// `REDIS_TIMEOUT` has no default here because the services differ (the orchestrator answers 503
/// after 1 s, a worker waits 2 s): each sets its own with [`RedisArgs::with_timeout_default`], and
/// one that forgets fails to parse instead of silently taking the other's.
#[derive(Debug, Clone, clap::Args)]
pub struct RedisArgs {
    /// Redis URL, `redis://[user:password@]host:port[/db]`; never printed, it may hold a password.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: SecretString,

    /// Seed nodes of a Redis Cluster, comma-separated (`redis://[user:password@]host:port`,
    /// any reachable primaries or replicas): set, the services talk to the cluster (following
    /// `MOVED`/`ASK` and topology changes) instead of `REDIS_URL`. Never printed.
    #[arg(long, env = "REDIS_CLUSTER_URLS", hide_env_values = true)]
    pub redis_cluster_urls: Option<SecretString>,

    /// Prefix of every Redis key (isolates systems sharing one Redis; the same in every service).
    #[arg(long, env = "KEY_PREFIX", default_value = "agent")]
    pub key_prefix: String,

    /// Partitions the queue is split into, each a complete queue under its own hash tag (the
    /// same in every service; change it only on an empty queue): 1 ..= 256. Each partition costs every
    /// worker a blocking connection and its own scheduler and maintenance loops.
    #[arg(
        long,
        env = "QUEUE_PARTITIONS",
        default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..=i64::from(crate::keys::MAX_PARTITIONS))
    )]
    pub queue_partitions: u16,

    /// Longest wait for one Redis connection or reply, e.g. `500ms`, `2s`.
    #[arg(long, env = "REDIS_TIMEOUT", value_parser = humantime::parse_duration)]
    pub redis_timeout: Duration,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,
}

impl RedisArgs {
    /// `command` (a service's, with these arguments flattened in) with `default` as the default
    /// of `REDIS_TIMEOUT`, in humantime form (`1s`).
    pub fn with_timeout_default(command: Command, default: &'static str) -> Command {
        // Required (no default) as derived; a default makes it optional.
        command.mut_arg("redis_timeout", |arg| {
            arg.default_value(default).required(false)
        })
    }

    /// The connection settings: `REDIS_TIMEOUT` bounds both connecting and each reply.
    pub fn settings(&self) -> RedisSettings {
        RedisSettings {
            url: self.redis_url.clone(),
            cluster_urls: self.redis_cluster_urls.clone(),
            connect_timeout: self.redis_timeout,
            response_timeout: self.redis_timeout,
        }
    }

    /// The URL (or the cluster's seed URLs) with any password replaced by `***`, for logs.
    pub fn redacted_url(&self) -> String {
        match &self.redis_cluster_urls {
            Some(urls) => cluster_seeds(urls.expose_secret())
                .map(redact_url)
                .collect::<Vec<_>>()
                .join(","),
            None => redact_url(self.redis_url.expose_secret()),
        }
    }

    /// Whether the services talk to a Redis Cluster (`REDIS_CLUSTER_URLS`).
    pub fn is_cluster(&self) -> bool {
        self.redis_cluster_urls.is_some()
    }

    /// The partitions of the queue `config` describes (`QUEUE_PARTITIONS`); on a Redis Cluster
    /// every key is hash-tagged, even with one partition.
    pub fn partitions(&self, config: crate::queue::QueueConfig) -> crate::Partitions {
        if self.is_cluster() {
            crate::Partitions::hash_tagged(config, self.queue_partitions)
        } else {
            crate::Partitions::new(config, self.queue_partitions)
        }
    }
}

/// The seed URLs of `REDIS_CLUSTER_URLS`, trimmed, empty ones skipped.
fn cluster_seeds(raw: &str) -> impl Iterator<Item = &str> {
    raw.split(',').map(str::trim).filter(|url| !url.is_empty())
}

/// Worker liveness as both services judge it (flattened into both `Config`s): a worker takes
/// over the tasks of dead workers, the orchestrator's `/stats` stops counting them.
#[derive(Debug, Clone, clap::Args)]
pub struct LivenessArgs {
    /// A worker whose heartbeat is older than this is dead: its tasks are taken over and
    /// `/stats` no longer counts it.
    #[arg(
        long,
        env = "WORKER_DEAD_AFTER",
        default_value = "3s",
        value_parser = humantime::parse_duration
    )]
    pub worker_dead_after: Duration,
}

/// A duration setting renamed from its `*_MS` spelling (whole milliseconds) to a humantime one:
/// `WORKER_HEARTBEAT_MS=1000` became `WORKER_HEARTBEAT=1s`.
///
/// The old spelling keeps working for one release: [`parse_config`] adds a hidden argument for
/// it, moves its value to the new setting and reports it (see [`warn_deprecated`]). Giving both
/// spellings is an error.
pub struct Renamed<C> {
    /// Id of the new argument: the name of its field (`heartbeat`).
    pub id: &'static str,
    /// The old environment variable (`WORKER_HEARTBEAT_MS`).
    pub old_env: &'static str,
    /// The old long flags, also in milliseconds: the first is the hidden argument's own, the
    /// others its aliases (flags that took milliseconds before the rename).
    pub old_flags: &'static [&'static str],
    /// The field the value lands in.
    pub field: fn(&mut C) -> &mut Duration,
}

impl<C> Renamed<C> {
    /// The hidden argument that reads the old spelling.
    fn arg(&self) -> Arg {
        let (long, aliases) = self
            .old_flags
            .split_first()
            .expect("a renamed setting names its old flag");
        Arg::new(self.old_env)
            .long(*long)
            .aliases(aliases.iter().copied())
            .env(self.old_env)
            .hide(true)
            .action(ArgAction::Set)
            .value_parser(parse_millis)
    }
}

/// A deprecated setting name that was used; log it with [`warn_deprecated`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deprecated {
    /// The old name (`WORKER_HEARTBEAT_MS`).
    pub old: &'static str,
    /// The name to use instead (`WORKER_HEARTBEAT`).
    pub new: String,
    /// The value it set.
    pub value: Duration,
}

impl std::fmt::Display for Deprecated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is deprecated, use {}={}",
            self.old,
            self.new,
            humantime::format_duration(self.value)
        )
    }
}

/// Parses a service's settings from `args` and the environment: `adjust` changes the command
/// first (defaults of shared settings, [`RedisArgs::with_timeout_default`]), then the `renamed`
/// settings' old spellings are resolved, here and nowhere else. Returns the settings and the
/// deprecated names that were used, to be logged once tracing is up.
pub fn parse_config<C: clap::Parser>(
    args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
    adjust: impl FnOnce(Command) -> Command,
    renamed: &[Renamed<C>],
) -> Result<(C, Vec<Deprecated>), clap::Error> {
    let mut command = renamed
        .iter()
        .fold(adjust(C::command()), |command, r| command.arg(r.arg()));
    let matches = command.try_get_matches_from_mut(args)?;
    let mut config = C::from_arg_matches(&matches).map_err(|err| err.format(&mut command))?;
    let mut used = Vec::new();
    for r in renamed {
        if let Some(deprecated) = resolve_renamed(&command, &matches, r, &mut config)? {
            used.push(deprecated);
        }
    }
    Ok((config, used))
}

/// Moves the value of `r`'s old spelling, if given, to its new setting.
fn resolve_renamed<C>(
    command: &Command,
    matches: &ArgMatches,
    r: &Renamed<C>,
    config: &mut C,
) -> Result<Option<Deprecated>, clap::Error> {
    let Some(&value) = matches.get_one::<Duration>(r.old_env) else {
        return Ok(None);
    };
    let new = command
        .get_arguments()
        .find(|arg| arg.get_id() == r.id)
        .and_then(Arg::get_env)
        .unwrap_or_else(|| panic!("renamed setting {}: no argument with an env name", r.id))
        .to_string_lossy()
        .into_owned();
    if matches
        .value_source(r.id)
        .is_some_and(|source| source != ValueSource::DefaultValue)
    {
        return Err(command.clone().error(
            clap::error::ErrorKind::ArgumentConflict,
            format!(
                "both {new} and the deprecated {} are set; keep only {new}",
                r.old_env
            ),
        ));
    }
    *(r.field)(config) = value;
    Ok(Some(Deprecated {
        old: r.old_env,
        new,
        value,
    }))
}

/// Logs one warning per deprecated setting name that was used (once, at start-up).
pub fn warn_deprecated(deprecated: &[Deprecated]) {
    for d in deprecated {
        tracing::warn!(deprecated = d.old, replacement = %d.new, "{d}");
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// JSON when stdout is not a terminal (containers), text otherwise.
    #[default]
    Auto,
    /// One JSON object per line, fields flattened.
    Json,
    /// Human-readable text.
    Text,
}

/// The async runtime of a service (`WORKER_THREADS`, `ORCHESTRATOR_THREADS`): with one thread,
/// everything runs on the calling thread (a current-thread runtime: no wake-ups across threads,
/// the cheapest per request or task when the work is mostly waiting on Redis); with more, a
/// work-stealing pool of that many; with `None`, a pool of one thread per core.
pub fn runtime(threads: Option<u16>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(usize::from(n.max(1)));
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all().build()
}

/// [`init_tracing`] with lines written in batches ([`crate::log_buffer`]): the worker's, whose
/// finisher flushes them before each batch of outcomes.
pub fn init_tracing_buffered(format: LogFormat) {
    init_tracing_to(format, crate::log_buffer::BufferedStdout::start());
}

/// Installs the global tracing subscriber: `RUST_LOG` filter (default `info`), format as asked.
pub fn init_tracing(format: LogFormat) {
    init_tracing_to(format, std::io::stdout);
}

fn init_tracing_to<W>(format: LogFormat, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    // try_init: a test may have installed a subscriber already.
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder.try_init()
    };
}

/// `url` with any password replaced by `***`, for logs and error messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{path}")
            } else {
                format!("{scheme}://***@{host}{path}")
            }
        }
        None => url.to_owned(),
    }
}

/// A Redis URL could not be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid {setting} {url}: {reason}")]
pub struct InvalidRedisUrl {
    /// `REDIS_URL` or `REDIS_CLUSTER_URLS`.
    setting: &'static str,
    url: String,
    reason: String,
}

/// How the services talk to Redis.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]`; its `Debug` shows no password.
    pub url: SecretString,
    /// A Redis Cluster's seed URLs, comma-separated: used instead of `url` when set.
    pub cluster_urls: Option<SecretString>,
    /// Longest wait for a connection.
    pub connect_timeout: Duration,
    /// Longest wait for a reply.
    pub response_timeout: Duration,
}

impl RedisSettings {
    /// A client for the URL, or an error that names it (redacted).
    pub fn client(&self) -> Result<redis::Client, InvalidRedisUrl> {
        let url = self.url.expose_secret();
        redis::Client::open(url).map_err(|err| InvalidRedisUrl {
            setting: "REDIS_URL",
            url: redact_url(url),
            reason: err.to_string().replace(url, &redact_url(url)),
        })
    }

    /// A multiplexed connection to the single Redis of `url` ([`RedisSettings::connection_manager`])
    /// or, with `cluster_urls`, to the cluster: the cluster client connects in the background
    /// (a service starts while the cluster is down), routes each command by its key's slot,
    /// follows `MOVED` and `ASK`, and refreshes the topology after a failover.
    pub fn connection(&self) -> Result<RedisConn, InvalidRedisUrl> {
        let Some(urls) = &self.cluster_urls else {
            return self.connection_manager().map(RedisConn::Single);
        };
        let raw = urls.expose_secret();
        let invalid = |reason: String| InvalidRedisUrl {
            setting: "REDIS_CLUSTER_URLS",
            url: cluster_seeds(raw)
                .map(redact_url)
                .collect::<Vec<_>>()
                .join(","),
            reason: reason.replace(raw, "***"),
        };
        let seeds: Vec<&str> = cluster_seeds(raw).collect();
        if seeds.is_empty() {
            return Err(invalid("REDIS_CLUSTER_URLS names no node".to_owned()));
        }
        let client = redis::cluster::ClusterClient::builder(seeds)
            .connection_timeout(self.connect_timeout)
            .response_timeout(self.response_timeout)
            .retries(2)
            .min_retry_wait(50)
            .max_retry_wait(500)
            .build()
            .map_err(|err| invalid(err.to_string()))?;
        let config = redis::cluster::ClusterConfig::new()
            .set_connection_timeout(self.connect_timeout)
            .set_response_timeout(self.response_timeout);
        Ok(RedisConn::Cluster(
            client.get_pending_async_connection_with_config(config),
        ))
    }

    /// A self-healing multiplexed connection. It connects lazily, so a service starts while
    /// Redis is down; after a failure the next call reconnects, with capped backoff.
    pub fn connection_manager(&self) -> Result<ConnectionManager, InvalidRedisUrl> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.response_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let client = self.client()?;
        ConnectionManager::new_lazy_with_config(client, config).map_err(|err| InvalidRedisUrl {
            setting: "REDIS_URL",
            url: redact_url(self.url.expose_secret()),
            reason: err.to_string(),
        })
    }
}

/// One multiplexed connection to Redis: a single server or a Redis Cluster
/// ([`RedisSettings::connection`]). Cheap to clone; every clone shares the connection.
#[derive(Clone)]
pub enum RedisConn {
    /// `REDIS_URL`.
    Single(ConnectionManager),
    /// `REDIS_CLUSTER_URLS`.
    Cluster(redis::cluster_async::ClusterConnection),
}

impl RedisConn {
    /// True when a command may reach Redis twice: the cluster client sends a command again when
    /// the connection it went out on drops before the reply (and after `MOVED`, `TRYAGAIN`,
    /// ...), so its final error may come from a later try while the first was applied. The
    /// single-server connection never sends a command again: its errors are about the one try.
    pub fn may_resend(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }
}

impl redis::aio::ConnectionLike for RedisConn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            RedisConn::Single(conn) => conn.req_packed_command(cmd),
            RedisConn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            RedisConn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(conn) => conn.get_db(),
            RedisConn::Cluster(conn) => conn.get_db(),
        }
    }
}

/// Latency buckets (seconds) for request and execution histograms.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The Prometheus handle; installs the global recorder on first use. One per process: tests that
/// start several apps share it.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .map(PrometheusBuilder::build_recorder)
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Fails only if another recorder is installed; then this handle renders nothing new,
            // which beats crashing a server over metrics.
            let _ = metrics::set_global_recorder(recorder);
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .ok();
            handle
        })
        .clone()
}

/// Parses a whole number of milliseconds (the deprecated `*_MS` spellings, [`Renamed`]).
pub fn parse_millis(raw: &str) -> Result<Duration, String> {
    raw.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| format!("expected milliseconds as a whole number, got {raw:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_survive_redaction() {
        assert_eq!(
            redact_url("redis://:s3cret@redis:6379/0"),
            "redis://:***@redis:6379/0"
        );
        assert_eq!(
            redact_url("redis://app:s3cret@redis:6379"),
            "redis://app:***@redis:6379"
        );
        assert_eq!(redact_url("rediss://tok@h"), "rediss://***@h");
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }

    /// A service's settings in miniature: the shared groups and one renamed setting.
    #[derive(Debug, clap::Parser)]
    struct Settings {
        #[command(flatten)]
        redis: RedisArgs,
        #[command(flatten)]
        liveness: LivenessArgs,
        /// Heartbeat period.
        #[arg(long = "worker-heartbeat", env = "WORKER_HEARTBEAT", default_value = "1s", value_parser = humantime::parse_duration)]
        heartbeat: Duration,
    }

    const RENAMED: &[Renamed<Settings>] = &[
        Renamed {
            id: "heartbeat",
            old_env: "WORKER_HEARTBEAT_MS",
            old_flags: &["worker-heartbeat-ms", "heartbeat"],
            field: |s| &mut s.heartbeat,
        },
        Renamed {
            id: "worker_dead_after",
            old_env: "WORKER_DEAD_AFTER_MS",
            old_flags: &["worker-dead-after-ms"],
            field: |s| &mut s.liveness.worker_dead_after,
        },
    ];

    fn parse(args: &[&str]) -> Result<(Settings, Vec<Deprecated>), clap::Error> {
        parse_config(
            std::iter::once("service").chain(args.iter().copied()),
            |command| RedisArgs::with_timeout_default(command, "2s"),
            RENAMED,
        )
    }

    #[test]
    fn defaults_come_from_the_shared_groups_and_the_service() {
        let (settings, deprecated) = parse(&[]).expect("defaults parse");
        assert!(deprecated.is_empty());
        assert_eq!(settings.redis.redis_timeout, Duration::from_secs(2));
        assert_eq!(settings.redis.key_prefix, "agent");
        assert_eq!(settings.redis.log_format, LogFormat::Auto);
        assert_eq!(
            settings.redis.redis_url.expose_secret(),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(settings.liveness.worker_dead_after, Duration::from_secs(3));
        assert_eq!(settings.heartbeat, Duration::from_secs(1));
    }

    #[test]
    fn durations_are_humantime() {
        let (settings, deprecated) = parse(&[
            "--redis-timeout",
            "500ms",
            "--worker-dead-after",
            "1s",
            "--worker-heartbeat",
            "250ms",
        ])
        .expect("parses");
        assert!(deprecated.is_empty());
        assert_eq!(settings.redis.redis_timeout, Duration::from_millis(500));
        assert_eq!(
            settings.liveness.worker_dead_after,
            Duration::from_millis(1000)
        );
        assert_eq!(settings.heartbeat, Duration::from_millis(250));
        let err = parse(&["--redis-timeout", "500"]).expect_err("a bare number has no unit");
        assert!(err.to_string().contains("time unit needed"), "{err}");
    }

    #[test]
    fn a_shared_setting_without_its_service_default_is_an_error() {
        let err = parse_config(["service"], |command| command, RENAMED)
            .expect_err("REDIS_TIMEOUT has no shared default");
        assert_eq!(
            err.kind(),
            clap::error::ErrorKind::MissingRequiredArgument,
            "{err}"
        );
    }

    #[test]
    fn an_old_ms_spelling_sets_the_new_setting_and_is_reported() {
        for flag in ["--worker-heartbeat-ms", "--heartbeat"] {
            let (settings, deprecated) = parse(&[flag, "250"]).expect("parses");
            assert_eq!(settings.heartbeat, Duration::from_millis(250), "{flag}");
            assert_eq!(
                deprecated,
                [Deprecated {
                    old: "WORKER_HEARTBEAT_MS",
                    new: "WORKER_HEARTBEAT".into(),
                    value: Duration::from_millis(250),
                }],
                "{flag}"
            );
            assert_eq!(
                deprecated[0].to_string(),
                "WORKER_HEARTBEAT_MS is deprecated, use WORKER_HEARTBEAT=250ms"
            );
        }
        let (settings, deprecated) = parse(&["--worker-dead-after-ms", "3000"]).expect("parses");
        assert_eq!(settings.liveness.worker_dead_after, Duration::from_secs(3));
        assert_eq!(
            deprecated[0].to_string(),
            "WORKER_DEAD_AFTER_MS is deprecated, use WORKER_DEAD_AFTER=3s"
        );
    }

    #[test]
    fn old_spellings_stay_in_milliseconds_and_out_of_the_help() {
        let err = parse(&["--worker-heartbeat-ms", "1s"]).expect_err("whole milliseconds");
        assert!(err.to_string().contains("milliseconds"), "{err}");
        let mut command = RENAMED
            .iter()
            .fold(<Settings as clap::CommandFactory>::command(), |c, r| {
                c.arg(r.arg())
            });
        let help = command.render_long_help().to_string();
        assert!(help.contains("WORKER_HEARTBEAT"), "{help}");
        assert!(!help.contains("_MS"), "{help}");
    }

    #[test]
    fn old_and_new_spelling_together_is_an_error_naming_both() {
        let err = parse(&["--worker-heartbeat", "1s", "--worker-heartbeat-ms", "250"])
            .expect_err("both spellings");
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        let message = err.to_string();
        assert!(
            message.contains("WORKER_HEARTBEAT ") && message.contains("WORKER_HEARTBEAT_MS"),
            "{message}"
        );
    }

    #[test]
    fn the_redis_url_never_shows_in_debug_output() {
        let (mut settings, _) = parse(&[]).expect("defaults parse");
        settings.redis.redis_url = "redis://agent:hunter2@redis:6379".into();
        let debug = format!("{settings:?} {:?}", settings.redis.settings());
        assert!(!debug.contains("hunter2"), "{debug}");
        assert_eq!(
            settings.redis.redacted_url(),
            "redis://agent:***@redis:6379"
        );
    }

    #[test]
    fn an_unparsable_url_is_reported_without_its_password() {
        let settings = RedisSettings {
            url: "nope://:hunter2@x".into(),
            cluster_urls: None,
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
        };
        let err = settings.client().expect_err("bad scheme").to_string();
        assert!(err.contains("invalid REDIS_URL"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn cluster_seed_urls_are_checked_and_never_shown_with_their_password() {
        for bad in ["0", "257", "-1", "two"] {
            let arg = format!("--queue-partitions={bad}");
            let err = parse(&[&arg]).expect_err(bad).to_string();
            assert!(err.contains("queue-partitions"), "{err}");
        }
        let (mut settings, _) = parse(&[]).expect("defaults parse");
        assert_eq!(settings.redis.queue_partitions, 1);
        settings.redis.redis_cluster_urls =
            Some("redis://agent:hunter2@a:7000, redis://agent:hunter2@b:7001".into());
        assert!(settings.redis.is_cluster());
        assert_eq!(
            settings.redis.redacted_url(),
            "redis://agent:***@a:7000,redis://agent:***@b:7001"
        );
        let debug = format!("{settings:?} {:?}", settings.redis.settings());
        assert!(!debug.contains("hunter2"), "{debug}");
        // on a cluster every key is hash-tagged, even with one partition
        let partitions = settings
            .redis
            .partitions(crate::queue::QueueConfig::default());
        assert!(
            partitions.all()[0]
                .keys()
                .task_prefix()
                .starts_with("agent:{")
        );

        for bad in [" , ", "nope://:hunter2@x:1"] {
            settings.redis.redis_cluster_urls = Some(bad.into());
            let err = match settings.redis.settings().connection() {
                Ok(_) => panic!("{bad:?} accepted"),
                Err(err) => err.to_string(),
            };
            assert!(err.contains("invalid REDIS_CLUSTER_URLS"), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }
}
