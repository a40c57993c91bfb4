//! The plan of one run: the file's steps plus the faults drawn from `[chaos]`, time-scaled and
//! sorted.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Action, ChaosSettings, ClockOffset, Expectations, Link, Scenario, Subject, Target};

impl Scenario {
    /// The concrete steps of one run: file steps plus chaos faults, all offsets multiplied by
    /// `time_scale`, sorted by offset.
    pub fn plan(&self, seed_override: Option<u64>, time_scale: f64) -> Plan {
        let scale = |d: Duration| d.mul_f64(time_scale);
        let load_duration = scale(self.load.duration);
        let mut steps: Vec<PlannedStep> = self
            .steps
            .iter()
            .map(|s| PlannedStep {
                at: scale(s.at),
                action: s.action,
                subject: s.subject,
                replicas: s.replicas,
                probability: s.probability,
                offset: s.offset.map(|o| ClockOffset {
                    by: scale(o.by),
                    ..o
                }),
                delay: s.delay,
                origin: StepOrigin::File,
            })
            .collect();
        let mut seed = None;
        if let Some(chaos) = &self.chaos {
            let chaos_seed = seed_override.unwrap_or(chaos.seed);
            seed = Some(chaos_seed);
            steps.extend(chaos_steps(
                chaos,
                chaos_seed,
                self.cluster.workers,
                &scale,
                load_duration,
            ));
        }
        steps.sort_by_key(|s| s.at);
        Plan {
            steps,
            load_duration,
            seed,
            time_scale,
            timing: ServiceTiming::scaled(time_scale),
        }
    }
}

/// The steps one run executes.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Steps sorted by offset (already time-scaled).
    pub steps: Vec<PlannedStep>,
    /// How long the load runs (already time-scaled).
    pub load_duration: Duration,
    /// Seed used for chaos faults, if the scenario has any.
    pub seed: Option<u64>,
    /// Factor applied to every offset and to the load duration.
    pub time_scale: f64,
    /// The services' timeouts, scaled with the faults.
    pub timing: ServiceTiming,
}

impl Plan {
    /// Every fault of the plan with how long it lasts: until the step that heals it on the same
    /// service or link, or to the end of the load.
    pub fn fault_spans(&self) -> Vec<(&PlannedStep, Duration)> {
        self.steps
            .iter()
            .enumerate()
            .filter_map(|(i, step)| {
                let healing = step.action.healing_action()?;
                let healed_at = self.steps[i + 1..]
                    .iter()
                    .find(|later| {
                        later.subject.heals(&step.subject)
                            && (later.action == healing || later.action == Action::Restart)
                    })
                    .map_or(self.load_duration, |later| later.at);
                Some((step, healed_at.saturating_sub(step.at)))
            })
            .collect()
    }

    /// Refuses a plan whose faults are too short for the effect the expectations require:
    /// `min_reclaimed` needs a worker killed, or one stopped, paused or disconnected for longer
    /// than its peers take to declare it dead ([`ServiceTiming::takeover_after`]);
    /// `min_unavailable` needs Redis or the orchestrator killed, or stopped, paused or
    /// disconnected for longer than the orchestrator's Redis timeout. The message names the
    /// fault, its length at this time scale and the timeout.
    pub fn refuse_ineffective_faults(&self, expect: &Expectations) -> Result<(), String> {
        /// An effect an expectation requires: faults on these services (or a partition between
        /// them and Redis) must outlast `needed`.
        struct Need {
            expectation: &'static str,
            on: fn(Target) -> bool,
            needed: Duration,
            what: &'static str,
        }
        let spans = self.fault_spans();
        let cuts = |subject: &Subject, action: Action, on: fn(Target) -> bool| match subject {
            Subject::Service(target) => on(*target),
            Subject::Link(link) => action == Action::Partition && link.joins(on, Target::is_redis),
            Subject::AllLinks => false,
        };
        let longest = |on: fn(Target) -> bool| {
            spans
                .iter()
                .filter(|(step, _)| cuts(&step.subject, step.action, on))
                .max_by_key(|(step, span)| (step.action == Action::Kill, *span))
                .map(|(step, span)| (*step, *span))
        };
        let mut checks = Vec::new();
        if expect.min_reclaimed.is_some() {
            checks.push(Need {
                expectation: "min_reclaimed",
                on: |t| matches!(t, Target::Worker(_) | Target::AllWorkers),
                needed: self.timing.takeover_after(),
                what: "WORKER_DEAD_AFTER + WORKER_HEARTBEAT",
            });
        }
        if expect.min_unavailable.is_some() {
            checks.push(Need {
                expectation: "min_unavailable",
                on: |t| t.is_redis() || t == Target::Orchestrator,
                needed: self.timing.orchestrator_redis_timeout,
                what: "the orchestrator's REDIS_TIMEOUT",
            });
        }
        for Need {
            expectation,
            on,
            needed,
            what,
        } in checks
        {
            match longest(on) {
                // A killed service is gone at once, whatever its span.
                Some((step, _)) if step.action == Action::Kill => {}
                Some((_, span)) if span > needed => {}
                Some((step, span)) => {
                    return Err(format!(
                        "{expectation} needs a fault longer than {what} ({}) at time scale {}, \
                         but the longest one, {} {} at {}, lasts {}; use a larger --time-scale",
                        humantime::format_duration(needed),
                        self.time_scale,
                        step.action,
                        step.subject,
                        humantime::format_duration(step.at),
                        humantime::format_duration(span),
                    ));
                }
                // No such fault (a restart, or faults removed): nothing to refuse; the
                // expectation itself fails if nothing else has the effect.
                None => {}
            }
        }
        Ok(())
    }
}

/// The services' timing settings. [`ServiceTiming::default`] is the services' own defaults;
/// [`ServiceTiming::scaled`] shrinks or stretches them with a run's time scale, so a fault
/// scaled down still outlasts the timeouts it is meant to exceed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServiceTiming {
    /// `WORKER_HEARTBEAT`.
    pub heartbeat: Duration,
    /// `WORKER_DEAD_AFTER` (workers and orchestrator).
    pub dead_after: Duration,
    /// `WORKER_LEASE`.
    pub lease: Duration,
    /// The worker's `REDIS_TIMEOUT`.
    pub worker_redis_timeout: Duration,
    /// The orchestrator's `REDIS_TIMEOUT`: a Redis fault shorter than this causes no 503.
    pub orchestrator_redis_timeout: Duration,
    /// `RETRY_BASE`.
    pub retry_base: Duration,
    /// `RETRY_MAX`.
    pub retry_max: Duration,
}

impl Default for ServiceTiming {
    fn default() -> Self {
        let ms = Duration::from_millis;
        Self {
            heartbeat: ms(1_000),
            dead_after: ms(3_000),
            lease: ms(30_000),
            worker_redis_timeout: ms(2_000),
            orchestrator_redis_timeout: ms(1_000),
            retry_base: ms(500),
            retry_max: ms(60_000),
        }
    }
}

impl ServiceTiming {
    /// The defaults times `time_scale`, each kept above a floor under which a loaded machine
    /// (2 cores shared by Redis, the services and the load) would see false alarms: a heartbeat
    /// of at least 200 ms, dead after at least 1 s and 3 heartbeats, Redis timeouts of at least
    /// 500 ms.
    pub fn scaled(time_scale: f64) -> Self {
        let base = Self::default();
        let scale = |d: Duration, floor: Duration| d.mul_f64(time_scale).max(floor);
        let ms = Duration::from_millis;
        let heartbeat = scale(base.heartbeat, ms(200));
        Self {
            heartbeat,
            dead_after: scale(base.dead_after, ms(1_000).max(heartbeat * 3)),
            lease: scale(base.lease, ms(2_000)),
            worker_redis_timeout: scale(base.worker_redis_timeout, ms(500)),
            orchestrator_redis_timeout: scale(base.orchestrator_redis_timeout, ms(500)),
            retry_base: scale(base.retry_base, ms(50)),
            retry_max: scale(base.retry_max, ms(1_000)),
        }
    }

    /// How long a worker must be silent before a peer takes its tasks over: dead after, plus
    /// up to one heartbeat until a peer's next look.
    pub fn takeover_after(&self) -> Duration {
        self.dead_after + self.heartbeat
    }
}

/// One step of a [`Plan`].
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedStep {
    /// Offset from the start of the load.
    pub at: Duration,
    /// What to do.
    pub action: Action,
    /// On which service or link.
    pub subject: Subject,
    /// With `scale`: wanted replicas.
    pub replicas: Option<u32>,
    /// With `loss`: the share of packets dropped.
    pub probability: Option<f64>,
    /// With `clock-jump`: how far (time-scaled like the offsets).
    pub offset: Option<ClockOffset>,
    /// With `delay`: the latency added (not time-scaled: it is a property of the link).
    pub delay: Option<super::LinkDelay>,
    /// Written in the file or drawn by chaos.
    pub origin: StepOrigin,
}

/// Where a planned step came from; `file` or `chaos` in reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepOrigin {
    /// A `[[step]]` of the file.
    File,
    /// Drawn from the `[chaos]` generator.
    Chaos,
}

fn chaos_steps(
    chaos: &ChaosSettings,
    seed: u64,
    initial_workers: u32,
    scale: &dyn Fn(Duration) -> Duration,
    load_duration: Duration,
) -> Vec<PlannedStep> {
    let mut rng = SplitMix64(seed);
    let until = chaos.until.map(scale).unwrap_or(load_duration);
    let fault_duration = scale(chaos.fault_duration);
    let interval = scale(chaos.interval);
    let mut at = scale(chaos.start);
    let mut steps = Vec::new();
    // Faults in force: when each is healed, and the service it holds.
    let mut holding: Vec<(Duration, Target)> = Vec::new();
    let step = |at, action, subject| PlannedStep {
        at,
        action,
        subject,
        replicas: None,
        probability: None,
        offset: None,
        delay: None,
        origin: StepOrigin::Chaos,
    };
    // With `max_concurrent = 1` faults are sequential: one is healed before the next is
    // injected, so every fault's recovery is measured on its own. Above, a fault starts every
    // `interval` (jittered) while fewer than `max_concurrent` hold, each on a service no other
    // holds: a partition during a Redis pause, a kill during a partition.
    while at < until {
        holding.retain(|(healed_at, _)| *healed_at > at);
        if holding.len() >= chaos.max_concurrent {
            at = holding
                .iter()
                .map(|(healed_at, _)| *healed_at)
                .min()
                .unwrap_or(at);
            continue;
        }
        let action = chaos.actions[rng.below(chaos.actions.len() as u64) as usize];
        let target = match chaos.targets[rng.below(chaos.targets.len() as u64) as usize] {
            Target::AllWorkers => Target::Worker(1 + rng.below(u64::from(initial_workers)) as u32),
            other => other,
        };
        // A partition cuts the target from Redis (Redis from the orchestrator); its rules sit in
        // the first service's namespace, so a restart of Redis does not end it, and that service
        // is the one the fault holds.
        let (subject, holds) = match (action, target) {
            (Action::Partition, Target::Redis) => (
                Subject::Link(Link {
                    a: Target::Orchestrator,
                    b: Target::Redis,
                    one_way: false,
                }),
                Target::Orchestrator,
            ),
            (Action::Partition, other) => (
                Subject::Link(Link {
                    a: other,
                    b: Target::Redis,
                    one_way: false,
                }),
                other,
            ),
            _ => (Subject::Service(target), target),
        };
        if !holding.iter().any(|(_, held)| *held == holds) {
            steps.push(step(at, action, subject));
            if let Some(heal) = action.healing_action() {
                steps.push(step(at + fault_duration, heal, subject));
                holding.push((at + fault_duration, holds));
                if chaos.max_concurrent == 1 {
                    at += fault_duration;
                }
            }
        }
        // Jitter the pause between faults by ±50% so faults do not line up with load phases.
        let jitter = 0.5 + (rng.below(1001) as f64) / 1000.0;
        at += interval.mul_f64(jitter).max(Duration::from_millis(100));
    }
    steps
}

/// SplitMix64: a tiny generator whose sequence is fixed forever, so a seed in a report replays
/// the same faults with any version of the harness's dependencies.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0); the modulo bias is irrelevant for picking faults.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "t"
[load]
rate = 10
duration = "10s"
"#;

    fn parse(text: &str) -> Result<Scenario, crate::scenario::ScenarioError> {
        Scenario::parse(text, "scenarios/t.toml")
    }

    #[test]
    fn timing_scales_with_the_time_scale_above_its_floors() {
        let ms = Duration::from_millis;
        assert_eq!(ServiceTiming::scaled(1.0), ServiceTiming::default());
        let quarter = ServiceTiming::scaled(0.25);
        assert_eq!(quarter.heartbeat, ms(250));
        assert_eq!(
            quarter.dead_after,
            ms(1_000),
            "floored: 750 ms would be too tight"
        );
        assert_eq!(quarter.lease, ms(7_500));
        assert_eq!(quarter.orchestrator_redis_timeout, ms(500), "floored");
        assert_eq!(quarter.worker_redis_timeout, ms(500));
        assert_eq!(quarter.takeover_after(), ms(1_250));
        let tiny = ServiceTiming::scaled(0.01);
        assert_eq!(tiny.heartbeat, ms(200));
        assert!(tiny.dead_after >= tiny.heartbeat * 3);
        assert_eq!(ServiceTiming::scaled(2.0).dead_after, ms(6_000));
    }

    #[test]
    fn a_fault_too_short_for_its_expected_effect_is_refused_naming_both() {
        let partition = |at_ms: u64, heal_ms: u64, expect: &str| {
            format!(
                "{MINIMAL}\n[[step]]\nat = \"{at_ms}ms\"\naction = \"disconnect\"\ntarget = \"worker.1\"\n\
                 [[step]]\nat = \"{heal_ms}ms\"\naction = \"connect\"\ntarget = \"worker.1\"\n\
                 [expect]\n{expect}\n"
            )
        };
        // 10 s at 0.25 is 2.5 s, over the 1.25 s a takeover needs then
        let long = parse(&partition(6_000, 16_000, "min_reclaimed = 1")).unwrap();
        assert_eq!(
            long.plan(None, 0.25)
                .refuse_ineffective_faults(&long.expect),
            Ok(())
        );
        // 4 s at 0.25 is 1 s: too short
        let short = parse(&partition(6_000, 10_000, "min_reclaimed = 1")).unwrap();
        let refused = short
            .plan(None, 0.25)
            .refuse_ineffective_faults(&short.expect)
            .unwrap_err();
        for needle in [
            "min_reclaimed",
            "WORKER_DEAD_AFTER + WORKER_HEARTBEAT (1s 250ms)",
            "disconnect worker.1",
            "lasts 1s",
            "time scale 0.25",
        ] {
            assert!(refused.contains(needle), "{needle:?} in {refused}");
        }
        // the same fault without that expectation: nothing to refuse
        let unexpected = parse(&partition(6_000, 10_000, "lost = 0")).unwrap();
        assert_eq!(
            unexpected
                .plan(None, 0.25)
                .refuse_ineffective_faults(&unexpected.expect),
            Ok(())
        );
        // a kill takes effect at once, whatever its span
        let kill = parse(&format!(
            "{MINIMAL}\n[[step]]\nat = \"6s\"\naction = \"kill\"\ntarget = \"redis\"\n\
             [[step]]\nat = \"6100ms\"\naction = \"start\"\ntarget = \"redis\"\n\
             [expect]\nmin_unavailable = 1\n"
        ))
        .unwrap();
        assert_eq!(
            kill.plan(None, 0.25)
                .refuse_ineffective_faults(&kill.expect),
            Ok(())
        );
        // a Redis pause shorter than the orchestrator's Redis timeout causes no 503
        let pause = parse(&format!(
            "{MINIMAL}\n[[step]]\nat = \"6s\"\naction = \"pause\"\ntarget = \"redis\"\n\
             [[step]]\nat = \"7s\"\naction = \"unpause\"\ntarget = \"redis\"\n\
             [expect]\nmin_unavailable = 1\n"
        ))
        .unwrap();
        let refused = pause
            .plan(None, 0.25)
            .refuse_ineffective_faults(&pause.expect)
            .unwrap_err();
        assert!(refused.contains("REDIS_TIMEOUT (500ms)"), "{refused}");
        assert!(
            pause
                .plan(None, 1.0)
                .refuse_ineffective_faults(&pause.expect)
                .is_err(),
            "at full scale the 1 s pause only equals the 1 s timeout"
        );
    }

    #[test]
    fn steps_are_sorted_and_time_scaled() {
        let text = format!(
            "{MINIMAL}\n[[step]]\nat = \"8s\"\naction = \"start\"\ntarget = \"redis\"\n\
             [[step]]\nat = \"4s\"\naction = \"kill\"\ntarget = \"redis\"\n"
        );
        let plan = parse(&text).unwrap().plan(None, 0.5);
        let offsets: Vec<_> = plan.steps.iter().map(|s| (s.at, s.action)).collect();
        assert_eq!(
            offsets,
            vec![
                (Duration::from_secs(2), Action::Kill),
                (Duration::from_secs(4), Action::Start)
            ]
        );
        assert_eq!(plan.load_duration, Duration::from_secs(5));
    }

    #[test]
    fn overlapping_chaos_holds_several_faults_on_different_services_and_replays_per_seed() {
        let text = format!(
            "{}\n[chaos]\nseed = 11\ninterval = \"1s\"\nfault_duration = \"3s\"\nmax_concurrent = 2\n\
             actions = [\"pause\", \"partition\"]\ntargets = [\"worker\", \"redis\", \"orchestrator\"]\n",
            MINIMAL.replace("\"10s\"", "\"60s\"")
        );
        let scenario = parse(&text).unwrap();
        let plan = scenario.plan(None, 1.0);
        assert_eq!(plan, scenario.plan(None, 1.0), "same seed, same plan");
        assert_ne!(plan.steps, scenario.plan(Some(12), 1.0).steps);
        // Walk the plan: never more than two faults at once, never two on one service, and at
        // some point two at once.
        let mut held: Vec<Subject> = Vec::new();
        let mut most = 0;
        for step in &plan.steps {
            if step.action == Action::Heal || step.action == Action::Unpause {
                let before = held.len();
                held.retain(|s| !step.subject.heals(s));
                assert_eq!(held.len() + 1, before, "{step:?} heals one fault");
            } else {
                assert!(!held.contains(&step.subject), "{step:?} on a held service");
                held.push(step.subject);
                most = most.max(held.len());
            }
        }
        assert!(held.is_empty(), "every fault is healed: {held:?}");
        assert_eq!(most, 2, "faults overlap");
        assert!(
            plan.steps
                .iter()
                .any(|s| matches!(s.subject, Subject::Link(_)) && s.action == Action::Partition),
            "chaos draws partitions"
        );
    }

    #[test]
    fn chaos_is_deterministic_per_seed_and_heals_every_fault() {
        let text = format!(
            "{}\n[chaos]\nseed = 7\ninterval = \"2s\"\nfault_duration = \"1s\"\n\
             actions = [\"kill\", \"pause\", \"restart\"]\ntargets = [\"worker\", \"redis\"]\n",
            MINIMAL.replace("\"10s\"", "\"60s\"")
        );
        let scenario = parse(&text).unwrap();
        let first = scenario.plan(None, 1.0);
        assert_eq!(first, scenario.plan(None, 1.0), "same seed, same plan");
        assert_ne!(first.steps, scenario.plan(Some(8), 1.0).steps);
        assert_eq!(first.seed, Some(7));
        assert!(first.steps.len() >= 10, "a minute of chaos has many faults");
        let faults = first
            .steps
            .iter()
            .filter(|s| s.action.healing_action().is_some())
            .count();
        let heals = first
            .steps
            .iter()
            .filter(|s| matches!(s.action, Action::Start | Action::Unpause | Action::Connect))
            .count();
        assert_eq!(faults, heals, "every kill or pause is healed");
        assert!(
            first
                .steps
                .iter()
                .all(|s| s.subject != Subject::Service(Target::AllWorkers))
        );
    }
}
