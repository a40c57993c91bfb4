//! The host tools the chores need, and installing the Debian ones when we are root.
//!
//! `redis-server` and `prometheus` are more than test dependencies: their binaries go into the
//! images `agent-redis` and `agent-prometheus`. `cargo xtask require TOOL` is the justfile's
//! `_require-*` recipes.

use std::env;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail, ensure};

/// A tool `cargo xtask require` checks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Tool {
    /// The Docker CLI, a reachable engine and compose (v2 plugin or v1.29).
    Docker,
    /// `redis-server` and `redis-cli` (Debian `redis-server`; installed when root).
    RedisServer,
    /// `/usr/bin/prometheus` and `promtool` (Debian `prometheus`; installed when root).
    Prometheus,
    /// `wrk`, `redis-benchmark` and the Redis server: what `cargo xtask bench` drives.
    Bench,
    /// A Chromium browser for the dashboard's test (Debian `chromium`, or `CHROME`; installed
    /// when root).
    Browser,
}

/// Fails with what to install (or installs it) unless `tool` is usable.
pub fn require(tool: Tool) -> anyhow::Result<()> {
    match tool {
        Tool::Docker => require_docker(),
        Tool::RedisServer => require_redis_server(),
        Tool::Prometheus => require_prometheus(),
        Tool::Bench => require_bench_tools(),
        Tool::Browser => require_browser(),
    }
}

/// The executable `program` on `PATH` (the shell's `command -v`).
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| is_executable(path))
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The value of `field` in an `INFO`-style reply (`field:value` lines), trimmed.
pub fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.trim().strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

/// Whether `program args` runs and exits 0, its output discarded.
pub fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn id(flag: &str) -> String {
    Command::new("id")
        .arg(flag)
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn is_root() -> bool {
    id("-u") == "0"
}

/// `apt-get update -qq && apt-get install -y -qq [--no-install-recommends] PACKAGE...`, quietly.
fn apt_install(packages: &[&str], no_recommends: bool) -> anyhow::Result<()> {
    let update = Command::new("apt-get")
        .args(["update", "-qq"])
        .stdin(Stdio::null())
        .status()
        .context("running apt-get update")?;
    ensure!(update.success(), "apt-get update failed ({update})");
    let mut install = Command::new("apt-get");
    install
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq"]);
    if no_recommends {
        install.arg("--no-install-recommends");
    }
    let status = install
        .args(packages)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .context("running apt-get install")?;
    ensure!(
        status.success(),
        "apt-get install {} failed ({status})",
        packages.join(" ")
    );
    Ok(())
}

/// The Docker CLI, its engine, and `docker compose` or `docker-compose`.
pub fn require_docker() -> anyhow::Result<()> {
    if find_on_path("docker").is_none() {
        bail!(
            "docker is not installed (no 'docker' on PATH). Install Docker Engine (Debian: \
             apt-get install -y docker.io docker-compose), or run the services without \
             containers: just dev"
        );
    }
    if !succeeds("docker", &["info"]) {
        bail!(
            "the Docker engine is not reachable: is dockerd running, and may {} use \
             /var/run/docker.sock?",
            id("-un")
        );
    }
    if !succeeds("docker", &["compose", "version"]) && find_on_path("docker-compose").is_none() {
        bail!(
            "neither 'docker compose' (v2 plugin) nor 'docker-compose' (v1.29) is installed \
             (Debian: apt-get install -y docker-compose)"
        );
    }
    Ok(())
}

/// `redis-server` and `redis-cli`; apt-get installs them when missing and we are root.
pub fn require_redis_server() -> anyhow::Result<()> {
    if find_on_path("redis-server").is_some() && find_on_path("redis-cli").is_some() {
        return Ok(());
    }
    if !is_root() {
        bail!("redis-server is missing; install it with: sudo apt-get install -y redis-server");
    }
    println!(
        "installing redis-server (Debian package; its binaries go into the agent-redis image)"
    );
    apt_install(&["redis-server"], false)
}

/// The browser the dashboard's test drives: `CHROME`, or Debian's `/usr/bin/chromium`.
pub fn require_browser() -> anyhow::Result<()> {
    if let Some(path) = env::var_os("CHROME") {
        ensure!(
            is_executable(Path::new(&path)),
            "CHROME={} is not an executable",
            Path::new(&path).display()
        );
        return Ok(());
    }
    if is_executable(Path::new("/usr/bin/chromium")) {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "chromium is missing (the dashboard's browser test); install it with: sudo apt-get \
             install -y --no-install-recommends chromium, or set CHROME"
        );
    }
    println!("installing chromium (Debian package; the dashboard's browser test drives it)");
    apt_install(&["chromium"], true)
}

/// `/usr/bin/prometheus` and `/usr/bin/promtool`, the binaries of `agent-prometheus`; apt-get
/// installs them when missing and we are root, and the package's own service is disabled (it
/// would take port 9090 on the host).
pub fn require_prometheus() -> anyhow::Result<()> {
    if is_executable(Path::new("/usr/bin/prometheus"))
        && is_executable(Path::new("/usr/bin/promtool"))
    {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "prometheus is missing; install it with: sudo apt-get install -y \
             --no-install-recommends prometheus"
        );
    }
    println!(
        "installing prometheus (Debian package; its binaries go into the agent-prometheus image)"
    );
    apt_install(&["prometheus"], true)?;
    if find_on_path("systemctl").is_some()
        && succeeds("systemctl", &["is-enabled", "--quiet", "prometheus"])
    {
        let _ = succeeds("systemctl", &["disable", "--now", "prometheus"]);
        println!("disabled the host's prometheus.service that the package started");
    }
    Ok(())
}

/// What the benchmark drives: the Redis server, `wrk` (installed when root) and `redis-benchmark`.
pub fn require_bench_tools() -> anyhow::Result<()> {
    require_redis_server()?;
    if find_on_path("wrk").is_none() {
        if !is_root() {
            bail!("wrk is missing; install it with: sudo apt-get install -y wrk");
        }
        println!("installing wrk (Debian package)");
        apt_install(&["wrk"], false)?;
    }
    if find_on_path("redis-benchmark").is_none() {
        bail!("redis-benchmark is missing (Debian: apt-get install -y redis-tools)");
    }
    Ok(())
}

/// `cargo-watch`, installed with `cargo install --locked` when missing.
pub fn require_cargo_watch() -> anyhow::Result<()> {
    if find_on_path("cargo-watch").is_some() {
        return Ok(());
    }
    let status = cargo()
        .args(["install", "--locked", "cargo-watch"])
        .stdin(Stdio::null())
        .status()
        .context("running cargo install cargo-watch")?;
    ensure!(
        status.success(),
        "cargo install cargo-watch failed ({status})"
    );
    Ok(())
}

/// The cargo that runs us (`CARGO` under `cargo run`, same toolchain), else `cargo` on PATH.
pub fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// `cargo build [--release] -p PACKAGE...` in the workspace; cargo rebuilds only what changed.
pub fn cargo_build(workspace_root: &Path, release: bool, packages: &[&str]) -> anyhow::Result<()> {
    let mut command = cargo();
    command.arg("build");
    if release {
        command.arg("--release");
    }
    for package in packages {
        command.args(["-p", package]);
    }
    let status = command
        .current_dir(workspace_root)
        .stdin(Stdio::null())
        .status()
        .context("running cargo build")?;
    ensure!(status.success(), "cargo build failed ({status})");
    Ok(())
}

/// Cargo's target directory of the workspace (honours `CARGO_TARGET_DIR` and `.cargo/config.toml`).
pub fn target_dir(workspace_root: &Path) -> anyhow::Result<PathBuf> {
    let output = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(workspace_root)
        .stdin(Stdio::null())
        .output()
        .context("running cargo metadata")?;
    ensure!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("parsing cargo metadata")?;
    let target = metadata["target_directory"]
        .as_str()
        .context("cargo metadata has no target_directory")?;
    Ok(PathBuf::from(target))
}
