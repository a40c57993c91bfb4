//! Fixed-rate (open-model) load: `POST /tasks` sent on a schedule, whatever the answers do.
//!
//! Requests are sent at fixed intervals: a pacer thread sleeps until each request's scheduled
//! instant and hands it to a single-threaded tokio runtime of its own, which sends it and reads
//! the answer. Requests
//! do not wait for earlier answers (open model), so a slow server cannot slow the offered rate
//! down and hide its own stalls (coordinated omission, which a closed-model tool such as wrk
//! or a throttled goose user suffers from).
//!
//! Latency runs from the moment a request is actually sent to the end of its answer. The
//! pacer's lateness (the generator shares the 2 cores with everything else) is reported on its
//! own, and so is the latency counted from the *scheduled* instant, which
//! charges that lateness to the server too. wrk2 is not packaged in Debian; this is its idea.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use serde::Serialize;
use tokio::sync::mpsc;

/// One fixed-rate run.
#[derive(Debug, Clone)]
pub struct FixedRate {
    /// `http://host:port/tasks`.
    pub url: String,
    /// The JSON body of every request.
    pub body: String,
    /// Requests per second.
    pub rate_per_s: u32,
    /// Unmeasured lead-in (connections open, caches warm).
    pub warmup: Duration,
    /// Measured part.
    pub duration: Duration,
}

/// One answered (or failed) measured request.
#[derive(Debug, Clone)]
struct Sample {
    latency: Duration,
    lateness: Duration,
    task_id: Option<String>,
    sent_at: SystemTime,
    answered_at: SystemTime,
    ok: bool,
}

/// The figures of a fixed-rate run.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct FixedRateResult {
    /// Scheduled rate.
    pub rate_per_s: u32,
    /// Measured seconds.
    pub duration_s: f64,
    /// Measured requests sent.
    pub sent: u64,
    /// Answered 201.
    pub ok: u64,
    /// Anything else (status, transport error, timeout).
    pub errors: u64,
    /// Latency from sending to the end of the answer, in milliseconds: median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Slowest request.
    pub max_ms: f64,
    /// 99th percentile of the latency counted from the scheduled instant (pacer lateness
    /// included).
    pub p99_from_schedule_ms: f64,
    /// How late the pacer sent, 99th percentile, in milliseconds.
    pub pacer_lateness_p99_ms: f64,
    /// CPU seconds this process (the generator) used during the run.
    pub generator_cpu_s: f64,
    /// The tasks created by measured requests, with when each request was sent and when its
    /// answer arrived (wall clock), for enqueue-to-start.
    #[serde(skip)]
    pub tasks: Vec<(String, SystemTime, SystemTime)>,
}

/// The value at quantile `q` (0..=1) of sorted `values`, nearest rank.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs `load` on a dedicated thread with its own single-threaded runtime; blocks until done.
pub fn run(load: &FixedRate) -> anyhow::Result<FixedRateResult> {
    let load = load.clone();
    std::thread::Builder::new()
        .name("open-loop".into())
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building the generator's runtime")?
                .block_on(run_on_this_thread(&load))
        })
        .context("starting the generator thread")?
        .join()
        .map_err(|_| anyhow::anyhow!("the generator thread panicked"))?
}

async fn run_on_this_thread(load: &FixedRate) -> anyhow::Result<FixedRateResult> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(5))
        .build()
        .context("building the http client")?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Sample>();
    let rate = u64::from(load.rate_per_s.max(1));
    let total = rate * (load.warmup + load.duration).as_millis() as u64 / 1000;
    let warmup_n = rate * load.warmup.as_millis() as u64 / 1000;
    let url: Arc<str> = load.url.as_str().into();
    let self_pid = std::process::id();
    let cpu_before = testkit::process::cpu_seconds(self_pid).unwrap_or(0.0);
    let start = Instant::now() + Duration::from_millis(20);
    // The pacer: a plain thread whose sleeps are precise to tens of microseconds (tokio's timer
    // ticks every millisecond), handing each due request to this runtime.
    let (due_tx, mut due_rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let pacer = std::thread::Builder::new()
        .name("pacer".into())
        .spawn(move || {
            for i in 0..total {
                let scheduled = start + Duration::from_nanos(i * 1_000_000_000 / rate);
                let now = Instant::now();
                if scheduled > now {
                    std::thread::sleep(scheduled - now);
                }
                if due_tx.send((i, scheduled)).is_err() {
                    return;
                }
            }
        })
        .context("starting the pacer thread")?;
    while let Some((next, scheduled)) = due_rx.recv().await {
        {
            let measured = next >= warmup_n;
            let client = client.clone();
            let url = Arc::clone(&url);
            let body = load.body.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let sent = Instant::now();
                let sent_at = SystemTime::now();
                let answer = client
                    .post(&*url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                let (ok, task_id) = match answer {
                    Ok(response) if response.status() == reqwest::StatusCode::CREATED => {
                        let bytes = response.bytes().await.unwrap_or_default();
                        let id = serde_json::from_slice::<serde_json::Value>(&bytes)
                            .ok()
                            .and_then(|v| v["id"].as_str().map(str::to_owned));
                        (id.is_some(), id)
                    }
                    Ok(_) | Err(_) => (false, None),
                };
                if measured {
                    let _ = tx.send(Sample {
                        latency: sent.elapsed(),
                        lateness: sent.saturating_duration_since(scheduled),
                        task_id,
                        sent_at,
                        answered_at: SystemTime::now(),
                        ok,
                    });
                }
            });
        }
    }
    pacer
        .join()
        .map_err(|_| anyhow::anyhow!("the pacer thread panicked"))?;
    drop(tx);
    let mut samples = Vec::with_capacity(total as usize);
    while let Some(sample) = rx.recv().await {
        samples.push(sample);
    }
    let generator_cpu_s = testkit::process::cpu_seconds(self_pid).unwrap_or(0.0) - cpu_before;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut latencies: Vec<f64> = samples.iter().map(|s| ms(s.latency)).collect();
    latencies.sort_by(f64::total_cmp);
    let mut from_schedule: Vec<f64> = samples.iter().map(|s| ms(s.latency + s.lateness)).collect();
    from_schedule.sort_by(f64::total_cmp);
    let mut lateness: Vec<f64> = samples.iter().map(|s| ms(s.lateness)).collect();
    lateness.sort_by(f64::total_cmp);
    let ok = samples.iter().filter(|s| s.ok).count() as u64;
    Ok(FixedRateResult {
        rate_per_s: load.rate_per_s,
        duration_s: load.duration.as_secs_f64(),
        sent: samples.len() as u64,
        ok,
        errors: samples.len() as u64 - ok,
        p50_ms: quantile(&latencies, 0.50),
        p90_ms: quantile(&latencies, 0.90),
        p99_ms: quantile(&latencies, 0.99),
        p999_ms: quantile(&latencies, 0.999),
        max_ms: latencies.last().copied().unwrap_or(0.0),
        p99_from_schedule_ms: quantile(&from_schedule, 0.99),
        pacer_lateness_p99_ms: quantile(&lateness, 0.99),
        generator_cpu_s,
        tasks: samples
            .into_iter()
            .filter_map(|s| Some((s.task_id?, s.sent_at, s.answered_at)))
            .collect(),
    })
}
