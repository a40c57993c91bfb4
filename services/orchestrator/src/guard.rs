//! Access control and limits in front of the task routes: bearer tokens and per-client rate
//! limiting of `POST /tasks`.

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde_json::json;
use subtle::ConstantTimeEq;

/// Accepted bearer tokens. `Debug` never shows them.
#[derive(Clone, Default)]
pub struct Tokens(Arc<Vec<Vec<u8>>>);

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tokens([redacted; {}])", self.0.len())
    }
}

impl Tokens {
    /// Tokens from a comma-separated list and/or a file with one token per line (`#` comments).
    pub fn load(list: Option<&str>, file: Option<&Path>) -> anyhow::Result<Self> {
        let mut tokens: Vec<String> = list
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading AUTH_TOKENS_FILE {}", path.display()))?;
            tokens.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|line| !line.is_empty() && !line.starts_with('#'))
                    .map(str::to_owned),
            );
        }
        if let Some(short) = tokens.iter().find(|t| t.len() < 16) {
            anyhow::bail!(
                "auth tokens must be at least 16 characters; one has {} (generate one with `openssl rand -hex 32`)",
                short.len()
            );
        }
        Ok(Self(Arc::new(
            tokens.into_iter().map(String::into_bytes).collect(),
        )))
    }

    /// True when no token is configured (authentication off).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `candidate` is one of the tokens. Every token is compared in constant time, and all
    /// of them are always compared, so timing reveals neither which token nor how much matched.
    pub fn accepts(&self, candidate: &[u8]) -> bool {
        self.0
            .iter()
            .fold(subtle::Choice::from(0), |found, token| {
                found | token.as_slice().ct_eq(candidate)
            })
            .into()
    }
}

fn unauthorized() -> Response {
    let body = json!({ "error": { "code": "unauthorized", "message": "a valid bearer token is required" } });
    let mut response = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let prefix = b"Bearer ";
    (value.len() > prefix.len() && value[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &value[prefix.len()..])
}

/// Middleware: with tokens configured, a request without a valid `Authorization: Bearer` token
/// gets 401 and reaches no handler.
pub async fn require_token(State(tokens): State<Tokens>, request: Request, next: Next) -> Response {
    if tokens.is_empty() {
        return next.run(request).await;
    }
    match bearer(request.headers()) {
        Some(token) if tokens.accepts(token) => next.run(request).await,
        _ => unauthorized(),
    }
}

/// Whose `Idempotency-Key`s a request sends: with tokens configured, the caller of its bearer
/// token (checked by [`require_token`] before any handler runs), otherwise the one open scope.
pub fn idempotency_scope(tokens: &Tokens, headers: &HeaderMap) -> taskq::IdempotencyScope {
    match bearer(headers) {
        Some(token) if !tokens.is_empty() => taskq::IdempotencyScope::for_token(token),
        _ => taskq::IdempotencyScope::open(),
    }
}

/// Per-client token buckets for `POST /tasks`. A client is its (validated) bearer token when
/// authentication is on, otherwise its IP address: unchecked tokens would let a client pick a new
/// key per request.
#[derive(Clone)]
pub struct SubmitLimiter(Option<Arc<DefaultKeyedRateLimiter<String>>>, bool);

impl fmt::Debug for SubmitLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "SubmitLimiter(on)"
        } else {
            "SubmitLimiter(off)"
        })
    }
}

impl SubmitLimiter {
    /// `per_second` submits per client with bursts of `burst`; 0 turns limiting off.
    /// `key_by_token`: authentication is on, so bearer tokens identify clients.
    pub fn new(per_second: u32, burst: u32, key_by_token: bool) -> Self {
        let Some(rate) = NonZeroU32::new(per_second) else {
            return Self(None, key_by_token);
        };
        let burst = NonZeroU32::new(burst).unwrap_or(rate);
        let limiter = Arc::new(RateLimiter::keyed(
            Quota::per_second(rate).allow_burst(burst),
        ));
        // Forget idle clients now and then, so the table cannot grow without end.
        let weak = Arc::downgrade(&limiter);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                ticker.tick().await;
                let Some(limiter) = weak.upgrade() else {
                    return;
                };
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
        });
        Self(Some(limiter), key_by_token)
    }

    /// Whether limiting is on.
    pub fn is_enabled(&self) -> bool {
        self.0.is_some()
    }
}

fn client_key(request: &Request, key_by_token: bool) -> String {
    if key_by_token && let Some(token) = bearer(request.headers()) {
        // The token never leaves this process; it only names the bucket.
        return format!("token:{}", String::from_utf8_lossy(token));
    }
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(
            || "unknown".to_owned(),
            |info| format!("ip:{}", info.0.ip()),
        )
}

/// Middleware: 429 with `Retry-After` when a client submits faster than its quota.
pub async fn limit_submits(
    State(limiter): State<SubmitLimiter>,
    request: Request,
    next: Next,
) -> Response {
    let SubmitLimiter(Some(buckets), key_by_token) = &limiter else {
        return next.run(request).await;
    };
    match buckets.check_key(&client_key(&request, *key_by_token)) {
        Ok(()) => next.run(request).await,
        Err(not_until) => {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            metrics::counter!("agent_http_rate_limited_total").increment(1);
            let body = json!({ "error": { "code": "rate_limited", "message": format!("too many tasks submitted; retry in {seconds} s") } });
            let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_tokens_are_accepted() {
        let tokens =
            Tokens::load(Some("aaaaaaaaaaaaaaaa1, bbbbbbbbbbbbbbbb2"), None).expect("valid tokens");
        assert!(tokens.accepts(b"aaaaaaaaaaaaaaaa1"));
        assert!(tokens.accepts(b"bbbbbbbbbbbbbbbb2"));
        assert!(!tokens.accepts(b"aaaaaaaaaaaaaaaa"));
        assert!(!tokens.accepts(b""));
        assert!(
            !format!("{tokens:?}").contains("aaaa"),
            "Debug must not show tokens"
        );
    }

    #[test]
    fn short_tokens_are_refused_at_start() {
        let err = Tokens::load(Some("short"), None).expect_err("too short");
        assert!(err.to_string().contains("at least 16"), "{err}");
    }
}
