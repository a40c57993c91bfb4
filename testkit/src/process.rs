//! The child-process supervisor: one [`Process`] per child, with its output in a log file (or
//! discarded), stopped with SIGTERM then SIGKILL after a grace, paused and resumed with
//! SIGSTOP/SIGCONT, SIGKILLed and reaped when dropped, and what Linux's `/proc` tells about it
//! (CPU seconds, peak resident memory).
//!
//! Blocking methods (for tests and the benchmark) have `_async` twins that poll instead of
//! blocking a Tokio worker thread (for the harness).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// How often a stopping process is checked for its exit.
const REAP_POLL: Duration = Duration::from_millis(10);

/// Where a child's stdout and stderr go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Log {
    /// Nowhere.
    Discard,
    /// To this file, created (or truncated) at every spawn.
    Create(PathBuf),
    /// To this file, appended across spawns (a restarted service keeps its earlier lines).
    Append(PathBuf),
}

impl Log {
    /// The log file, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Log::Discard => None,
            Log::Create(path) | Log::Append(path) => Some(path),
        }
    }

    fn open(&self) -> anyhow::Result<(Stdio, Stdio)> {
        let file = match self {
            Log::Discard => return Ok((Stdio::null(), Stdio::null())),
            Log::Create(path) => File::create(path),
            Log::Append(path) => OpenOptions::new().create(true).append(true).open(path),
        };
        let path = self.path().unwrap_or(Path::new(""));
        let file = file.with_context(|| format!("opening {}", path.display()))?;
        Ok((file.try_clone()?.into(), file.into()))
    }
}

/// How a stopped process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited by itself (after SIGTERM, or earlier) with this status.
    Exited(ExitStatus),
    /// It was still running at the deadline and was SIGKILLed.
    Killed,
    /// It had already been stopped or killed.
    NotRunning,
}

/// A supervised child process; see the module docs. SIGKILLed and reaped when dropped.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Option<Child>,
    log: Option<PathBuf>,
}

impl Process {
    /// Spawns `command` (stdin closed, stdout and stderr to `log`) under the short `name` used
    /// in messages. Program, arguments, environment and working directory are the command's.
    pub fn spawn(name: &str, command: &mut Command, log: Log) -> anyhow::Result<Self> {
        let (stdout, stderr) = log.open()?;
        let child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {name} ({})",
                    command.get_program().to_string_lossy()
                )
            })?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            log: log.path().map(Path::to_path_buf),
        })
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id; `None` once stopped or killed through this supervisor.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The log file, if the output is not discarded.
    pub fn log_path(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// The log so far (empty without one).
    pub fn log_text(&self) -> String {
        self.log
            .as_deref()
            .and_then(|path| read_log(path).ok())
            .unwrap_or_default()
    }

    /// `Some(code)` once the child has ended on its own, without being stopped through this
    /// supervisor: its exit status, or the number of the signal that ended it (negative when
    /// neither is known). `None` while it runs, or when it was stopped here.
    pub fn exited(&mut self) -> Option<i64> {
        use std::os::unix::process::ExitStatusExt;
        let status = self.child.as_mut()?.try_wait().ok()??;
        Some(
            status
                .code()
                .map(i64::from)
                .or(status.signal().map(i64::from))
                .unwrap_or(-1),
        )
    }

    /// Fails with the end of the log if the process has exited (or was stopped).
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        let Some(child) = self.child.as_mut() else {
            anyhow::bail!("{} is not running", self.name);
        };
        if let Some(status) = child.try_wait()? {
            let log = self.log.as_deref().map(|p| tail(p, 20)).unwrap_or_default();
            anyhow::bail!("{} exited ({status}); its log ends with:\n{log}", self.name);
        }
        Ok(())
    }

    /// Sends `signal`.
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .with_context(|| format!("{} is not running", self.name))?;
        let pid = i32::try_from(pid).context("pid out of range")?;
        nix::sys::signal::kill(Pid::from_raw(pid), signal)
            .with_context(|| format!("sending {signal} to {}", self.name))
    }

    /// SIGSTOP: freezes the process.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal(Signal::SIGSTOP)
    }

    /// SIGCONT: thaws a paused process.
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal(Signal::SIGCONT)
    }

    /// SIGTERM, without waiting; [`Process::reap_by`] waits. [`Process::stop`] does both.
    pub fn terminate(&self) -> anyhow::Result<()> {
        self.signal(Signal::SIGTERM)
    }

    /// SIGKILL, and waits for the exit. Does nothing when already stopped.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// [`Process::kill`] without blocking the runtime.
    pub async fn kill_async(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            while let Ok(None) = child.try_wait() {
                tokio::time::sleep(REAP_POLL).await;
            }
        }
    }

    /// SIGTERM, then waits up to `grace` for the exit, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) -> anyhow::Result<Exit> {
        if self.child.is_none() {
            return Ok(Exit::NotRunning);
        }
        self.terminate()?;
        self.reap_by(Instant::now() + grace)
    }

    /// [`Process::stop`] without blocking the runtime.
    pub async fn stop_async(&mut self, grace: Duration) -> anyhow::Result<Exit> {
        if self.child.is_none() {
            return Ok(Exit::NotRunning);
        }
        self.terminate()?;
        self.reap_by_async(Instant::now() + grace).await
    }

    /// Waits until `deadline` for the exit (after [`Process::terminate`]), then SIGKILLs.
    pub fn reap_by(&mut self, deadline: Instant) -> anyhow::Result<Exit> {
        let Some(child) = self.child.as_mut() else {
            return Ok(Exit::NotRunning);
        };
        loop {
            if let Some(status) = try_wait(&self.name, child)? {
                self.child = None;
                return Ok(Exit::Exited(status));
            }
            if Instant::now() >= deadline {
                self.kill();
                return Ok(Exit::Killed);
            }
            std::thread::sleep(REAP_POLL);
        }
    }

    /// [`Process::reap_by`] without blocking the runtime.
    pub async fn reap_by_async(&mut self, deadline: Instant) -> anyhow::Result<Exit> {
        loop {
            let Some(child) = self.child.as_mut() else {
                return Ok(Exit::NotRunning);
            };
            if let Some(status) = try_wait(&self.name, child)? {
                self.child = None;
                return Ok(Exit::Exited(status));
            }
            if Instant::now() >= deadline {
                self.kill_async().await;
                return Ok(Exit::Killed);
            }
            tokio::time::sleep(REAP_POLL).await;
        }
    }

    /// User + system CPU seconds used so far (all threads); `None` once it is gone.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.pid()?)
    }

    /// Peak resident set size so far in KiB (`VmHWM`); `None` once it is gone.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        peak_rss_kib(self.pid()?)
    }
}

fn try_wait(name: &str, child: &mut Child) -> anyhow::Result<Option<ExitStatus>> {
    child
        .try_wait()
        .with_context(|| format!("waiting for {name}"))
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A log file as text (invalid UTF-8 replaced); empty when it does not exist yet.
pub fn read_log(path: &Path) -> anyhow::Result<String> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The last `n` lines of a file, for error messages (empty when unreadable).
pub fn tail(path: &Path, n: usize) -> String {
    let text = read_log(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Clock ticks per second of `/proc/*/stat` times (`getconf CLK_TCK`, 100 on Linux).
pub fn clock_ticks() -> f64 {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        command
    }

    #[test]
    fn output_goes_to_the_log_appended_across_spawns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("echo.log");
        for word in ["one", "two"] {
            let mut process = Process::spawn(
                "echo",
                &mut sh(&format!("echo {word}; echo {word}-err >&2")),
                Log::Append(log.clone()),
            )
            .expect("spawn");
            let exit = process
                .reap_by(Instant::now() + Duration::from_secs(10))
                .expect("reap");
            assert!(matches!(exit, Exit::Exited(status) if status.success()));
        }
        assert_eq!(read_log(&log).expect("log"), "one\none-err\ntwo\ntwo-err\n");
        let mut created =
            Process::spawn("echo", &mut sh("echo three"), Log::Create(log.clone())).expect("spawn");
        created
            .reap_by(Instant::now() + Duration::from_secs(10))
            .expect("reap");
        assert_eq!(tail(&log, 5), "three");
    }

    #[test]
    fn stop_is_sigterm_and_a_process_ignoring_it_is_killed_after_the_grace() {
        let mut polite =
            Process::spawn("polite", &mut sh("exec sleep 30"), Log::Discard).expect("spawn");
        assert!(polite.cpu_seconds().is_some() && polite.peak_rss_kib().is_some());
        let exit = polite.stop(Duration::from_secs(10)).expect("stop");
        assert!(
            matches!(exit, Exit::Exited(status) if !status.success()),
            "{exit:?}"
        );
        assert_eq!(polite.pid(), None);
        assert_eq!(polite.stop(Duration::ZERO).expect("stop"), Exit::NotRunning);

        let mut stubborn = Process::spawn(
            "stubborn",
            &mut sh("trap '' TERM; exec sleep 30"),
            Log::Discard,
        )
        .expect("spawn");
        // Give the shell time to install its trap.
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        assert_eq!(
            stubborn.stop(Duration::from_millis(300)).expect("stop"),
            Exit::Killed
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn ensure_running_reports_the_exit_with_the_end_of_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut process = Process::spawn(
            "crasher",
            &mut sh("echo it broke; exit 3"),
            Log::Create(dir.path().join("crasher.log")),
        )
        .expect("spawn");
        let err = Wait::new("the crash", Duration::from_secs(10))
            .every(Duration::from_millis(10))
            .until(|| process.ensure_running().err());
        let message = format!("{err:#}");
        assert!(message.contains("crasher exited"), "{message}");
        assert!(message.ends_with("it broke"), "{message}");
    }

    #[tokio::test]
    async fn a_paused_process_resumes_and_the_async_twins_reap_it() {
        let mut process =
            Process::spawn("sleeper", &mut sh("exec sleep 30"), Log::Discard).expect("spawn");
        process.pause().expect("SIGSTOP");
        process.resume().expect("SIGCONT");
        process.terminate().expect("SIGTERM");
        let exit = process
            .reap_by_async(Instant::now() + Duration::from_secs(10))
            .await
            .expect("reap");
        assert!(matches!(exit, Exit::Exited(_)), "{exit:?}");
        assert!(
            process.signal(Signal::SIGTERM).is_err(),
            "no longer running"
        );

        let mut other =
            Process::spawn("sleeper", &mut sh("exec sleep 30"), Log::Discard).expect("spawn");
        let pid = other.pid().expect("pid");
        other.kill_async().await;
        assert_eq!(cpu_seconds(pid), None, "reaped");
    }

    use crate::wait::Wait;
}
