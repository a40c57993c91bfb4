//! The plan of one run: the file's steps plus the faults drawn from `[chaos]`, time-scaled and
//! sorted.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Action, ChaosSettings, Scenario, Target};

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
                target: s.target,
                replicas: s.replicas,
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
}

/// One step of a [`Plan`].
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedStep {
    /// Offset from the start of the load.
    pub at: Duration,
    /// What to do.
    pub action: Action,
    /// To which service.
    pub target: Target,
    /// With `scale`: wanted replicas.
    pub replicas: Option<u32>,
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
    // Faults are sequential: one is healed before the next is injected, so every fault's recovery
    // is measured on its own.
    while at < until {
        let action = chaos.actions[rng.below(chaos.actions.len() as u64) as usize];
        let target = match chaos.targets[rng.below(chaos.targets.len() as u64) as usize] {
            Target::AllWorkers => Target::Worker(1 + rng.below(u64::from(initial_workers)) as u32),
            other => other,
        };
        steps.push(PlannedStep {
            at,
            action,
            target,
            replicas: None,
            origin: StepOrigin::Chaos,
        });
        if let Some(heal) = action.healing_action() {
            at += fault_duration;
            steps.push(PlannedStep {
                at,
                action: heal,
                target,
                replicas: None,
                origin: StepOrigin::Chaos,
            });
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
        assert!(first.steps.iter().all(|s| s.target != Target::AllWorkers));
    }
}
