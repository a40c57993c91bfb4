//! `just run` and `just dev`: the orchestrator and a worker as local processes, with a local
//! `redis-server` (AOF, `appendfsync always`) started unless one already answers on the port.
//!
//! `run`: the services run in a process group of their own. Ctrl-C (or SIGTERM) reaches this
//! process, which sends SIGTERM to that whole group (the shell's `kill 0`), waits for it, and then
//! shuts down the Redis it started. `dev`: cargo-watch stays in the terminal's process group, so
//! Ctrl-C reaches it and what it runs; then the Redis goes too.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{Context, ensure};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;

use crate::tools;

/// A `redis-server` this process started (daemonized); shut down when dropped.
#[derive(Debug)]
pub struct LocalRedis {
    port: u16,
}

impl LocalRedis {
    /// Whether a Redis answers `PING` on `127.0.0.1:port`.
    pub fn answering(port: u16) -> bool {
        tools::succeeds("redis-cli", &["-p", &port.to_string(), "ping"])
    }

    /// Starts `redis-server` on `127.0.0.1:port` with its data, pid file and log in `dir`.
    pub fn start(port: u16, dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let status = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(taskq::keys::REDIS_TUNING_ARGS)
            .arg("--dir")
            .arg(dir)
            .args(["--daemonize", "yes"])
            .arg("--pidfile")
            .arg(dir.join("redis.pid"))
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdin(Stdio::null())
            .status()
            .context("running redis-server")?;
        ensure!(status.success(), "redis-server failed to start ({status})");
        Ok(Self { port })
    }
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        tools::succeeds("redis-cli", &["-p", &self.port.to_string(), "shutdown"]);
    }
}

/// The port from `variable`, 6379 when unset.
fn redis_port(variable: &str) -> anyhow::Result<u16> {
    match std::env::var(variable) {
        Ok(text) if !text.is_empty() => text
            .parse()
            .with_context(|| format!("{variable}={text:?} is not a port")),
        _ => Ok(6379),
    }
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// Spawns `command` into the process group `group` (a new one when `None`).
fn spawn_in_group(command: &mut Command, group: Option<u32>) -> anyhow::Result<Child> {
    command
        .stdin(Stdio::null())
        .process_group(group.map_or(0, |g| g as i32))
        .spawn()
        .with_context(|| format!("starting {:?}", command.get_program()))
}

/// Whom [`supervise`] sends SIGTERM when this process gets SIGINT, SIGTERM or SIGHUP.
enum Forward {
    /// The process group of the services (the shell's `kill 0`); Ctrl-C does not reach it.
    Group(Pid),
    /// One child, in our (the terminal's) process group, so Ctrl-C reaches it too.
    Process(Pid),
}

/// Waits for every child; meanwhile a signal to this process is forwarded as SIGTERM.
fn supervise(children: Vec<Child>, forward: Forward) -> anyhow::Result<()> {
    let running = Arc::new(Mutex::new(true));
    let handler_running = Arc::clone(&running);
    ctrlc::set_handler(move || {
        if *handler_running.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = match forward {
                Forward::Group(group) => killpg(group, Signal::SIGTERM),
                Forward::Process(pid) => kill(pid, Signal::SIGTERM),
            };
        }
    })
    .context("installing the Ctrl-C handler")?;
    for mut child in children {
        child.wait().context("waiting for a service")?;
    }
    *running.lock().unwrap_or_else(|e| e.into_inner()) = false;
    Ok(())
}

/// `just run`: release builds of the orchestrator (port 8000) and one worker (metrics on 9000),
/// and a Redis on `RUN_REDIS_PORT` (6379) with its data in `target/run-redis`, until Ctrl-C.
pub fn run(workspace_root: &Path) -> anyhow::Result<()> {
    tools::require_redis_server()?;
    tools::cargo_build(workspace_root, true, &["orchestrator", "worker"])?;
    let bin = tools::target_dir(workspace_root)?.join("release");
    let port = redis_port("RUN_REDIS_PORT")?;
    let _redis = if LocalRedis::answering(port) {
        None
    } else {
        let dir = workspace_root.join("target/run-redis");
        let redis = LocalRedis::start(port, &dir)?;
        println!(
            "run: started redis-server on port {port} (data and log in {})",
            dir.display()
        );
        Some(redis)
    };
    println!(
        "run: orchestrator on http://localhost:8000, worker metrics on http://localhost:9000/metrics"
    );
    let service = |name: &str| {
        let mut command = Command::new(bin.join(name));
        command
            .env("REDIS_URL", format!("redis://127.0.0.1:{port}"))
            .env("LOG_FORMAT", env_or("LOG_FORMAT", "text"));
        command
    };
    let orchestrator = spawn_in_group(&mut service("orchestrator"), None)?;
    let worker = spawn_in_group(&mut service("worker"), Some(orchestrator.id()));
    let worker = match worker {
        Ok(worker) => worker,
        Err(err) => {
            let _ = killpg(Pid::from_raw(orchestrator.id() as i32), Signal::SIGTERM);
            return Err(err);
        }
    };
    let group = Pid::from_raw(orchestrator.id() as i32);
    supervise(vec![orchestrator, worker], Forward::Group(group))
}

/// `just dev`: like [`run`] with debug builds that cargo-watch rebuilds and restarts on every
/// edit under `services/`; Redis on `DEV_REDIS_PORT` (6379), data in `target/dev-redis`.
pub fn dev(workspace_root: &Path) -> anyhow::Result<()> {
    tools::require_redis_server()?;
    tools::require_cargo_watch()?;
    let port = redis_port("DEV_REDIS_PORT")?;
    let _redis = if LocalRedis::answering(port) {
        println!("dev: using the redis-server already answering on port {port}");
        None
    } else {
        let dir = workspace_root.join("target/dev-redis");
        let redis = LocalRedis::start(port, &dir)?;
        println!(
            "dev: started redis-server on port {port} (data and log in {})",
            dir.display()
        );
        Some(redis)
    };
    let bin: PathBuf = tools::target_dir(workspace_root)?.join("debug");
    println!(
        "dev: orchestrator on http://localhost:8000; edits under services/ rebuild and restart both"
    );
    // cargo-watch joins -x and -s with `&&`; the inner sh keeps both services after the build.
    let services = format!(
        "sh -c '{0}/orchestrator & {0}/worker & wait'",
        bin.display()
    );
    let mut watch = tools::cargo();
    watch
        .args([
            "watch",
            "-w",
            "services",
            "-w",
            "Cargo.toml",
            "-w",
            "Cargo.lock",
        ])
        .args(["-x", "build -p orchestrator -p worker", "-s", &services])
        .current_dir(workspace_root)
        .env("REDIS_URL", format!("redis://127.0.0.1:{port}"))
        .env("LOG_FORMAT", env_or("LOG_FORMAT", "text"))
        .env("RUST_LOG", env_or("RUST_LOG", "info"));
    // cargo-watch stays in the terminal's process group: Ctrl-C reaches it and the services.
    let watch = watch
        .spawn()
        .context("starting cargo watch (cargo install --locked cargo-watch)")?;
    let pid = Pid::from_raw(watch.id() as i32);
    supervise(vec![watch], Forward::Process(pid))
}
