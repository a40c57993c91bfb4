//! Polling: wait until a probe succeeds, or fail naming what was awaited and what was seen last.
//!
//! A probe returns an `Option` (`Some(value)`: done) or a `Result` (`Ok(value)`: done; the error
//! is what it saw, repeated in the failure message). [`wait_for`] and [`assert_eventually`]
//! panic after the timeout, as tests want; [`Wait::try_until`] returns the error instead. The
//! probe always runs at least once, and the deadline is checked after each failed attempt.

use std::fmt::Display;
use std::time::{Duration, Instant};

/// What a probe reports: done with a value, or not yet (with what it saw, when it knows).
pub trait Outcome {
    /// The value of a successful probe.
    type Value;
    /// `Ok(value)` when done, else `Err(what was seen)`.
    fn into_result(self) -> Result<Self::Value, Option<String>>;
}

impl<T> Outcome for Option<T> {
    type Value = T;

    fn into_result(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: Display> Outcome for Result<T, E> {
    type Value = T;

    fn into_result(self) -> Result<T, Option<String>> {
        self.map_err(|seen| Some(format!("{seen:#}")))
    }
}

/// A wait: what is awaited (for the message), for how long, and how often to probe.
#[derive(Debug, Clone)]
pub struct Wait {
    what: String,
    timeout: Duration,
    every: Duration,
}

impl Wait {
    /// How often a probe runs unless [`Wait::every`] says otherwise.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(100);

    /// Waits up to `timeout` for `what`, probing every [`Wait::DEFAULT_INTERVAL`].
    pub fn new(what: impl Into<String>, timeout: Duration) -> Self {
        Self {
            what: what.into(),
            timeout,
            every: Self::DEFAULT_INTERVAL,
        }
    }

    /// Probes every `interval` instead.
    pub fn every(mut self, interval: Duration) -> Self {
        self.every = interval;
        self
    }

    /// Runs `probe` until it succeeds; the error names the wait and the last thing seen.
    pub fn try_until<O: Outcome>(&self, mut probe: impl FnMut() -> O) -> anyhow::Result<O::Value> {
        let deadline = Instant::now() + self.timeout;
        loop {
            match probe().into_result() {
                Ok(value) => return Ok(value),
                Err(seen) if Instant::now() >= deadline => return Err(self.timed_out(seen)),
                Err(_) => std::thread::sleep(self.every),
            }
        }
    }

    /// [`Wait::try_until`], panicking on timeout.
    pub fn until<O: Outcome>(&self, probe: impl FnMut() -> O) -> O::Value {
        self.try_until(probe).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Wait::try_until`] for an async probe; sleeps without blocking the runtime.
    pub async fn try_until_async<O: Outcome>(
        &self,
        mut probe: impl AsyncFnMut() -> O,
    ) -> anyhow::Result<O::Value> {
        let deadline = Instant::now() + self.timeout;
        loop {
            match probe().await.into_result() {
                Ok(value) => return Ok(value),
                Err(seen) if Instant::now() >= deadline => return Err(self.timed_out(seen)),
                Err(_) => tokio::time::sleep(self.every).await,
            }
        }
    }

    /// [`Wait::try_until_async`], panicking on timeout.
    pub async fn until_async<O: Outcome>(&self, probe: impl AsyncFnMut() -> O) -> O::Value {
        self.try_until_async(probe)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn timed_out(&self, seen: Option<String>) -> anyhow::Error {
        let seen = seen
            .map(|s| format!("; last seen: {s}"))
            .unwrap_or_default();
        anyhow::anyhow!(
            "timed out after {:?} waiting for {}{seen}",
            self.timeout,
            self.what
        )
    }
}

/// Polls `probe` every 100 ms until it succeeds and returns its value.
///
/// # Panics
/// After `timeout`, naming `what` (and the last error the probe returned, if any).
pub fn wait_for<O: Outcome>(what: &str, timeout: Duration, probe: impl FnMut() -> O) -> O::Value {
    Wait::new(what, timeout).until(probe)
}

/// [`wait_for`] with an async probe.
pub async fn wait_for_async<O: Outcome>(
    what: &str,
    timeout: Duration,
    probe: impl AsyncFnMut() -> O,
) -> O::Value {
    Wait::new(what, timeout).until_async(probe).await
}

/// Asserts that `condition` holds within `timeout` (polled every 100 ms).
///
/// # Panics
/// When it never held, naming `what`.
pub fn assert_eventually(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    wait_for(what, timeout, || condition().then_some(()));
}

/// [`assert_eventually`] with an async condition.
pub async fn assert_eventually_async(
    what: &str,
    timeout: Duration,
    mut condition: impl AsyncFnMut() -> bool,
) {
    wait_for_async(what, timeout, async || condition().await.then_some(())).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_millis(1);

    #[test]
    fn returns_the_first_value_the_probe_yields() {
        let mut calls = 0;
        let value = Wait::new("the third call", Duration::from_secs(5))
            .every(SHORT)
            .until(|| {
                calls += 1;
                (calls == 3).then_some(calls * 10)
            });
        assert_eq!(value, 30);
    }

    #[test]
    fn a_timeout_names_what_was_awaited_and_what_was_seen_last() {
        let mut calls = 0;
        let err = Wait::new("the impossible", Duration::from_millis(20))
            .every(SHORT)
            .try_until(|| {
                calls += 1;
                Err::<(), _>(format!("attempt {calls}"))
            })
            .expect_err("never succeeds");
        let message = err.to_string();
        assert!(
            message
                .starts_with("timed out after 20ms waiting for the impossible; last seen: attempt"),
            "{message}"
        );
        assert!(message.ends_with(&format!("attempt {calls}")), "{message}");
    }

    #[test]
    fn the_probe_runs_once_even_with_a_zero_timeout() {
        assert_eq!(wait_for("at once", Duration::ZERO, || Some(7)), 7);
    }

    #[test]
    #[should_panic(expected = "timed out after 10ms waiting for nothing")]
    fn assert_eventually_panics_when_the_condition_never_holds() {
        assert_eventually("nothing", Duration::from_millis(10), || false);
    }

    #[tokio::test]
    async fn async_probes_may_borrow_from_their_closure() {
        let mut seen = Vec::new();
        let value = Wait::new("the second call", Duration::from_secs(5))
            .every(SHORT)
            .until_async(async || {
                seen.push(seen.len());
                tokio::task::yield_now().await;
                if seen.len() == 2 {
                    Ok(seen.len())
                } else {
                    Err(seen.len())
                }
            })
            .await;
        assert_eq!(value, 2);
        assert_eventually_async("a true condition", SHORT, async || true).await;
    }
}
