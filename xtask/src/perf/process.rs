//! Child processes of a benchmark run, and what Linux's `/proc` tells about them: CPU time,
//! peak resident memory (`VmHWM`), and how busy the whole machine is.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A free TCP port on 127.0.0.1 (free when asked).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Clock ticks per second of `/proc/*/stat` times (`getconf CLK_TCK`, 100 on Linux).
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// User + system CPU seconds used so far by process `pid` (all threads), `None` once it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// Peak resident set size of `pid` in KiB (`VmHWM`).
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

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

/// A child process with its output in a log file; SIGKILLed when dropped.
#[derive(Debug)]
pub struct Service {
    /// Short name for messages.
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Service {
    /// Starts `program` with `args` and extra environment `env`, stdout and stderr to `log`.
    pub fn start(
        name: &str,
        program: &Path,
        args: &[&str],
        env: &[(&str, String)],
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {} ({})", name, program.display()))?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            log,
        })
    }

    /// The process id (0 once stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// CPU seconds used so far.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid()).unwrap_or(0.0)
    }

    /// Peak resident set size so far, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        peak_rss_kib(self.pid()).unwrap_or(0)
    }

    /// Fails with the log's tail if the process has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            anyhow::bail!(
                "{} exited ({status}); its log ends with:\n{}",
                self.name,
                tail(&self.log, 20)
            );
        }
        Ok(())
    }

    /// SIGTERM, then waits up to `grace` for the exit, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGKILL, and waits for the exit.
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill_hard();
    }
}

/// The last `n` lines of a file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
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
