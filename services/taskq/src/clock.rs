//! Noticing a jump of Redis's clock from a worker.
//!
//! Every timestamp of the queue comes from Redis's `TIME`, so when the Redis host's wall clock
//! jumps, every heartbeat looks older (forward) or newer (backward) than it is. A forward jump
//! past `WORKER_DEAD_AFTER` would make every live worker look dead at once, and the first peer to
//! look would take over all their running tasks. [`ClockWatch`] compares the Redis time of each
//! heartbeat with the worker's own monotonic clock: when Redis's time moved by more than the
//! elapsed monotonic time allows (give or take both calls' round trips and a tolerance), the
//! clock jumped. A worker that notices one judges nobody dead for `WORKER_DEAD_AFTER` (every
//! live peer heartbeats on the new clock meanwhile) and renews its leases at once; the takeover
//! script refuses to judge when its own Redis time disagrees with the caller's expectation.

use std::time::{Duration, Instant};

/// What one heartbeat told about Redis's clock.
#[derive(Debug, Clone, Copy)]
struct Sample {
    sent: Instant,
    rtt: Duration,
    redis_ms: i64,
}

/// The worker's view of Redis's clock; see the module docs.
#[derive(Debug, Clone)]
pub struct ClockWatch {
    tolerance: Duration,
    last: Option<Sample>,
}

impl ClockWatch {
    /// A watch that tolerates `tolerance` of disagreement beyond the round trips (a heartbeat
    /// period: a smaller jump cannot make a live worker look dead).
    pub fn new(tolerance: Duration) -> Self {
        Self {
            tolerance,
            last: None,
        }
    }

    /// Records a heartbeat sent at `sent`, answered after `rtt`, that stamped `redis_ms`; returns
    /// how far Redis's clock jumped since the previous one (ms, negative backward) when it
    /// disagrees with the monotonic clock by more than the round trips and the tolerance.
    pub fn observe(&mut self, sent: Instant, rtt: Duration, redis_ms: i64) -> Option<i64> {
        let now = Sample {
            sent,
            rtt,
            redis_ms,
        };
        let jump = self.last.and_then(|last| {
            let elapsed = sent.saturating_duration_since(last.sent);
            let moved = redis_ms - last.redis_ms;
            let off = moved - millis(elapsed);
            let bound = millis(self.tolerance + last.rtt + rtt);
            (off.abs() > bound).then_some(off)
        });
        self.last = Some(now);
        jump
    }

    /// The Redis time a call sent at `at` should see, for the takeover script's own check.
    /// `queued` is how late the call may reach Redis on its connection (its last round trip
    /// there): a call held behind others sees a later time, never an earlier one. `None` before
    /// the first heartbeat.
    pub fn expectation(&self, at: Instant, queued: Duration) -> Option<Expectation> {
        let last = self.last?;
        let behind_ms = millis(self.tolerance + last.rtt * 2);
        Some(Expectation {
            expected_ms: last.redis_ms + millis(at.saturating_duration_since(last.sent)),
            behind_ms,
            ahead_ms: behind_ms + millis(queued),
        })
    }
}

/// The Redis time a call should see, and how far behind or ahead of it Redis may be before its
/// clock counts as jumped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expectation {
    /// The expected Redis time, ms since the Unix epoch.
    pub expected_ms: i64,
    /// How far behind it Redis's time may be, ms.
    pub behind_ms: i64,
    /// How far ahead of it Redis's time may be, ms (a call queued on its connection runs late).
    pub ahead_ms: i64,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_steady_clock_is_no_jump_and_a_jump_is_measured_both_ways() {
        let t0 = Instant::now();
        let mut watch = ClockWatch::new(MS * 250);
        assert_eq!(watch.observe(t0, MS * 2, 1_000_000), None, "first sample");
        // 250 ms later by both clocks, a few ms of network noise
        assert_eq!(watch.observe(t0 + MS * 250, MS * 3, 1_000_253), None);
        // 250 ms later, Redis says 10.25 s later: a 10 s jump forward
        let jump = watch.observe(t0 + MS * 500, MS * 2, 1_010_503).unwrap();
        assert!((9_990..=10_010).contains(&jump), "{jump}");
        // then back by 20 s
        let jump = watch.observe(t0 + MS * 750, MS * 2, 990_753).unwrap();
        assert!((-20_010..=-19_990).contains(&jump), "{jump}");
    }

    #[test]
    fn slow_round_trips_widen_the_bound_instead_of_looking_like_a_jump() {
        let t0 = Instant::now();
        let mut watch = ClockWatch::new(MS * 250);
        watch.observe(t0, MS * 400, 1_000_000);
        // stamped late in a slow call: 600 ms apart by Redis, 250 ms by the worker
        assert_eq!(watch.observe(t0 + MS * 250, MS * 400, 1_000_600), None);
    }

    #[test]
    fn the_expectation_follows_the_monotonic_clock_from_the_last_heartbeat() {
        let t0 = Instant::now();
        let mut watch = ClockWatch::new(MS * 100);
        assert_eq!(watch.expectation(t0, Duration::ZERO), None);
        watch.observe(t0, MS * 5, 5_000);
        assert_eq!(
            watch.expectation(t0 + MS * 1_000, MS * 40),
            Some(Expectation {
                expected_ms: 6_000,
                behind_ms: 110,
                ahead_ms: 150
            })
        );
    }
}
