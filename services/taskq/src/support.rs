//! Process support shared by the services: logging set-up, the Prometheus recorder and Redis
//! connection settings.
//!
//! Not part of the protocol, but both binaries need the same behaviour here (log format, URL
//! redaction, reconnect policy), so it lives in one place.

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tracing_subscriber::EnvFilter;

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

/// Installs the global tracing subscriber: `RUST_LOG` filter (default `info`), format as asked.
pub fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
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
#[error("invalid REDIS_URL {url}: {reason}")]
pub struct InvalidRedisUrl {
    url: String,
    reason: String,
}

/// How the services talk to Redis.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Longest wait for a connection.
    pub connect_timeout: Duration,
    /// Longest wait for a reply.
    pub response_timeout: Duration,
}

impl RedisSettings {
    /// A client for the URL, or an error that names it (redacted).
    pub fn client(&self) -> Result<redis::Client, InvalidRedisUrl> {
        redis::Client::open(self.url.as_str()).map_err(|err| InvalidRedisUrl {
            url: redact_url(&self.url),
            reason: err.to_string().replace(&self.url, &redact_url(&self.url)),
        })
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
            url: redact_url(&self.url),
            reason: err.to_string(),
        })
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

/// Parses a whole number of milliseconds (for `*_MS` settings).
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

    #[test]
    fn an_unparsable_url_is_reported_without_its_password() {
        let settings = RedisSettings {
            url: "nope://:hunter2@x".into(),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
        };
        let err = settings.client().expect_err("bad scheme").to_string();
        assert!(err.contains("invalid REDIS_URL"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}
