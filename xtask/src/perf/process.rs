//! What Linux's `/proc/stat` tells about the whole machine (how busy it is), and the helper
//! commands of a benchmark run. The children themselves run under [`testkit::Process`], which
//! also reads their CPU seconds and peak resident memory.

use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use testkit::process::clock_ticks;

/// Busy and total CPU time of the whole machine, from `/proc/stat`, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct MachineCpu {
    busy: f64,
    total: f64,
}

impl MachineCpu {
    /// The counters now.
    pub fn now() -> Self {
        let read = || -> Option<Self> {
            let stat = std::fs::read_to_string("/proc/stat").ok()?;
            let line = stat.lines().next()?.strip_prefix("cpu ")?;
            let values: Vec<f64> = line
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal (guest time is inside user).
            let total: f64 = values.iter().take(8).sum();
            let idle = values.get(3)? + values.get(4)?;
            Some(Self {
                busy: (total - idle) / clock_ticks(),
                total: total / clock_ticks(),
            })
        };
        read().unwrap_or(Self {
            busy: 0.0,
            total: 0.0,
        })
    }

    /// CPU seconds the machine was busy since `earlier` (all cores).
    pub fn busy_since(&self, earlier: &Self) -> f64 {
        self.busy - earlier.busy
    }

    /// Share of the machine's capacity that was busy since `earlier`, in percent.
    pub fn busy_percent_since(&self, earlier: &Self) -> f64 {
        let total = self.total - earlier.total;
        if total <= 0.0 {
            0.0
        } else {
            100.0 * (self.busy - earlier.busy) / total
        }
    }
}

/// How busy the machine is while nothing of ours runs: busy share over `window`, in percent.
pub fn background_busy_percent(window: Duration) -> f64 {
    let before = MachineCpu::now();
    std::thread::sleep(window);
    MachineCpu::now().busy_percent_since(&before)
}

/// Runs a command to completion and returns its stdout; fails with its stderr.
pub fn output_of(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}: is it installed?"))?;
    anyhow::ensure!(
        out.status.success(),
        "{program} {}: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// First line of a command's output (stdout, else stderr), whatever its exit status: versions.
pub fn version_of(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(out) => {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        }
        Err(_) => format!("{program}: not found"),
    }
}
