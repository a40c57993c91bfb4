//! Process runtime: the services as local processes, for machines without Docker.
//!
//! Redis is a local `redis-server` (`HARNESS_REDIS_SERVER` or the one on `PATH`) on a free port of
//! 127.0.0.1 with its data in the run directory; the orchestrator and the workers are the
//! workspace's built binaries (`HARNESS_BIN_DIR`, else `target/release`, else `target/debug`).
//! Each process writes stdout and stderr to its own log file in the run directory, appended
//! across restarts, so the checker reads executions of killed workers too. Signals: kill =
//! SIGKILL, stop = SIGTERM then SIGKILL after the grace, pause/unpause = SIGSTOP/SIGCONT. There
//! is no network to partition: disconnect and connect fail with a clear message.
//!
//! The processes run under [`testkit::Process`] and the Redis command line is
//! [`testkit::RedisConfig`]'s, as in the tests and the benchmark.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use testkit::{Log, Process, RedisConfig, process::read_log, try_free_port};

use super::{ClusterSpec, Service};
use crate::{
    cleanup::{self, LiveRun},
    executions::{Execution, parse_executions},
    scenario::Persistence,
};

/// Env var naming the directory holding the `orchestrator` and `worker` binaries.
pub const BIN_DIR_ENV: &str = "HARNESS_BIN_DIR";
/// Env var naming the `redis-server` to run.
pub const REDIS_SERVER_ENV: &str = "HARNESS_REDIS_SERVER";

/// Executables the process runtime starts.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `orchestrator`.
    pub orchestrator: PathBuf,
    /// `worker`.
    pub worker: PathBuf,
    /// `redis-server`.
    pub redis_server: PathBuf,
}

impl Binaries {
    /// Finds the binaries (see the module docs for the search order).
    pub fn locate() -> anyhow::Result<Self> {
        let bin_dir = match std::env::var_os(BIN_DIR_ENV) {
            Some(dir) => PathBuf::from(dir),
            None => {
                let target = target_dir();
                let release = target.join("release");
                if release.join("orchestrator").exists() && release.join("worker").exists() {
                    release
                } else {
                    target.join("debug")
                }
            }
        };
        let orchestrator = bin_dir.join("orchestrator");
        let worker = bin_dir.join("worker");
        for binary in [&orchestrator, &worker] {
            if !binary.is_file() {
                bail!(
                    "{} is missing: build it with `cargo build --release -p orchestrator -p worker` \
                     or point {BIN_DIR_ENV} at a directory holding it",
                    binary.display()
                );
            }
        }
        let redis_server = match std::env::var_os(REDIS_SERVER_ENV) {
            Some(path) => PathBuf::from(path),
            None => find_on_path("redis-server").context(
                "redis-server is not on PATH (apt-get install redis-server, or set HARNESS_REDIS_SERVER)",
            )?,
        };
        Ok(Self {
            orchestrator,
            worker,
            redis_server,
        })
    }
}

/// The workspace's target directory (`CARGO_TARGET_DIR` or `<workspace>/target`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| xtask::images::default_workspace_root().join("target"))
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    })
}

/// Builds the release binaries of the orchestrator and the worker (cargo skips fresh ones).
pub async fn build_release_binaries() -> anyhow::Result<()> {
    let root = xtask::images::default_workspace_root();
    tokio::task::spawn_blocking(move || {
        testkit::cargo_build_release(&root, &["orchestrator", "worker"], true)
    })
    .await
    .context("waiting for cargo build")?
}

struct Proc {
    /// `None` while stopped.
    process: Option<Process>,
    log: PathBuf,
    /// Port the process listens on (Redis, orchestrator) or serves metrics on (worker).
    port: u16,
}

/// The process side of a [`super::Cluster`].
pub struct ProcessCluster {
    spec: ClusterSpec,
    binaries: Binaries,
    run_dir: PathBuf,
    procs: BTreeMap<Service, Proc>,
    redis_port: u16,
    orchestrator_port: u16,
    live: LiveRun,
    shut_down: bool,
    /// Redis's data on the fault filesystem instead of the run directory (declared after
    /// `procs`, so Redis is dead before it is unmounted).
    fault_disk: Option<super::disk::FaultDisk>,
    /// Redis's shiftable wall clock, for `clock-jump`.
    clock: Option<super::clock::ClockShift>,
}

impl ProcessCluster {
    /// Locates the binaries and creates the run directory; nothing runs yet.
    pub async fn create(spec: &ClusterSpec) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !spec.redis.is_cluster(),
            "a Redis Cluster runs in the docker runtime only (use --runtime docker)"
        );
        cleanup::sweep_leftovers(None).await?;
        let binaries = Binaries::locate()?;
        let run_dir = cleanup::create_run_dir(&spec.run_id)?;
        let live = LiveRun::Process(run_dir.clone());
        cleanup::register(live.clone());
        let cluster = ProcessCluster {
            spec: spec.clone(),
            binaries,
            redis_port: try_free_port()?,
            orchestrator_port: try_free_port()?,
            run_dir,
            procs: BTreeMap::new(),
            live,
            shut_down: false,
            fault_disk: None,
            clock: None,
        };
        let mut cluster = cluster;
        if spec.fault_disk {
            cluster.fault_disk = Some(super::disk::FaultDisk::mount(&spec.run_id)?);
        }
        if spec.clock_shift {
            cluster.clock = Some(super::clock::ClockShift::prepare(&spec.run_id)?);
        }
        std::fs::create_dir_all(cluster.run_dir.join("redis"))?;
        write_private(
            &cluster.run_dir.join("redis-auth.conf"),
            &format!("requirepass {}\n", cluster.spec.redis_password),
        )?;
        Ok(cluster)
    }

    /// Moves Redis's wall clock; returns the total offset in nanoseconds.
    pub fn clock_jump(&mut self, by: Duration, forward: bool) -> anyhow::Result<i64> {
        self.clock
            .as_mut()
            .context("redis runs without a shiftable clock (the cluster was started without `clock_shift`)")?
            .jump(by, forward)
    }

    /// The switches of Redis's fault filesystem, when the run has one.
    pub fn fault_disk(&self) -> Option<faultfs::Control> {
        self.fault_disk.as_ref().map(|d| d.control())
    }

    fn redis_dir(&self) -> PathBuf {
        match &self.fault_disk {
            Some(disk) => disk.data_dir().to_path_buf(),
            None => self.run_dir.join("redis"),
        }
    }

    /// Orchestrator base URL.
    pub fn orchestrator_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.orchestrator_port)
    }

    /// Redis URL.
    pub fn redis_url(&self) -> String {
        self.spec.redis_url_for("127.0.0.1", self.redis_port)
    }

    /// URL of a Redis server: the only one there is.
    pub fn node_url(&self, _service: Service) -> String {
        self.redis_url()
    }

    /// Metrics base URL of a worker.
    pub fn worker_health_url(&self, n: u32) -> Option<String> {
        self.procs
            .get(&Service::Worker(n))
            .map(|p| format!("http://127.0.0.1:{}", p.port))
    }

    fn command(&self, service: Service, port: u16) -> Command {
        let redis_url = self.redis_url();
        match service {
            // `create` refuses a cluster, so no node is ever started here.
            Service::Redis | Service::RedisNode(..) => {
                let mut command = RedisConfig::new()
                    .program(&self.binaries.redis_server)
                    // The password goes in a config file (first argument), not on the command line
                    // where `ps` would show it.
                    .config_file(self.run_dir.join("redis-auth.conf"))
                    .persistence(match self.spec.persistence {
                        Persistence::AofAlways => testkit::Persistence::AofAlways,
                        Persistence::AofEverysec => testkit::Persistence::AofEverysec,
                        Persistence::AofNo => testkit::Persistence::AofNo,
                        Persistence::None => testkit::Persistence::None,
                    })
                    .arg("--daemonize")
                    .arg("no")
                    .extra_args(super::REDIS_MEMORY_ARGS)
                    .extra_args(taskq::keys::REDIS_TUNING_ARGS)
                    .command(port, &self.redis_dir());
                command.envs(
                    self.clock
                        .iter()
                        .flat_map(|clock| super::clock::ClockShift::env(clock.dir())),
                );
                command
            }
            Service::Orchestrator => {
                let mut command = Command::new(&self.binaries.orchestrator);
                command
                    .env("REDIS_URL", &redis_url)
                    .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
                    .envs(self.spec.orchestrator_env());
                command
            }
            Service::Worker(_) => {
                // No WORKER_ID: like a container, every start gets a fresh id, so a restarted
                // replica never inherits the pending entries of the one that died.
                let mut command = Command::new(&self.binaries.worker);
                command
                    .env("REDIS_URL", &redis_url)
                    .env("METRICS_ADDR", format!("127.0.0.1:{port}"))
                    .envs(self.spec.worker_env());
                command
            }
        }
    }

    /// Spawns a service (again), appending to its log file.
    pub async fn start(&mut self, service: Service) -> anyhow::Result<()> {
        let port = match (self.procs.get(&service), service) {
            (Some(existing), _) => existing.port,
            (None, Service::Redis | Service::RedisNode(..)) => self.redis_port,
            (None, Service::Orchestrator) => self.orchestrator_port,
            (None, Service::Worker(_)) => try_free_port()?,
        };
        let log = self.run_dir.join(format!("{service}.log"));
        let process = Process::spawn(
            &service.to_string(),
            &mut self.command(service, port),
            Log::Append(log.clone()),
        )
        .with_context(|| format!("spawning {service}"))?;
        if let Some(pid) = process.pid() {
            let program = match service {
                Service::Redis | Service::RedisNode(..) => &self.binaries.redis_server,
                Service::Orchestrator => &self.binaries.orchestrator,
                Service::Worker(_) => &self.binaries.worker,
            };
            cleanup::record_child(&self.run_dir, pid, &program.display().to_string());
        }
        self.procs.insert(
            service,
            Proc {
                process: Some(process),
                log,
                port,
            },
        );
        Ok(())
    }

    /// Spawns several workers.
    pub async fn start_workers(&mut self, slots: &[u32]) -> anyhow::Result<()> {
        for slot in slots {
            self.start(Service::Worker(*slot)).await?;
        }
        Ok(())
    }

    fn proc_mut(&mut self, service: Service) -> anyhow::Result<&mut Proc> {
        self.procs
            .get_mut(&service)
            .with_context(|| format!("{service} was never started"))
    }

    fn running(&mut self, service: Service) -> anyhow::Result<&mut Process> {
        self.proc_mut(service)?
            .process
            .as_mut()
            .with_context(|| format!("{service} is not running"))
    }

    /// SIGKILL and reap.
    pub async fn kill(&mut self, service: Service) -> anyhow::Result<()> {
        let mut process = self
            .proc_mut(service)?
            .process
            .take()
            .with_context(|| format!("{service} is not running"))?;
        process.kill_async().await;
        Ok(())
    }

    /// SIGTERM, SIGKILL after `grace`, and reap.
    pub async fn stop(&mut self, service: Service, grace: Duration) -> anyhow::Result<()> {
        self.stop_many(&[service], grace).await
    }

    /// SIGTERM to all of them first, then reap each (SIGKILL after `grace`).
    pub async fn stop_many(&mut self, services: &[Service], grace: Duration) -> anyhow::Result<()> {
        for service in services {
            self.running(*service)?.terminate()?;
        }
        let deadline = Instant::now() + grace;
        for service in services {
            let mut process = self
                .proc_mut(*service)?
                .process
                .take()
                .context("no child")?;
            process.reap_by_async(deadline).await?;
        }
        Ok(())
    }

    /// SIGSTOP.
    pub async fn pause(&mut self, service: Service) -> anyhow::Result<()> {
        self.running(service)?.pause()
    }

    /// SIGCONT.
    pub async fn unpause(&mut self, service: Service) -> anyhow::Result<()> {
        self.running(service)?.resume()
    }

    /// Not possible without a network namespace.
    pub async fn disconnect(&mut self, service: Service) -> anyhow::Result<()> {
        bail!("the process runtime cannot cut {service} off the network; use --runtime docker")
    }

    /// Not possible without a network namespace.
    pub async fn connect(&mut self, service: Service) -> anyhow::Result<()> {
        bail!("the process runtime cannot reconnect {service}; use --runtime docker")
    }

    /// Services whose process ended by itself, with its exit status or signal number.
    pub async fn exited(&mut self) -> Vec<(Service, Option<i64>)> {
        self.procs
            .iter_mut()
            .filter_map(|(service, proc)| {
                let code = proc.process.as_mut()?.exited()?;
                Some((*service, Some(code)))
            })
            .collect()
    }

    /// The log file of a service.
    pub async fn logs(&self, service: Service) -> anyhow::Result<String> {
        let proc = self
            .procs
            .get(&service)
            .with_context(|| format!("{service} was never started"))?;
        read_log(&proc.log)
    }

    /// `task_executed` lines of every worker ever started in this run.
    pub async fn executions(&self) -> anyhow::Result<Vec<Execution>> {
        let mut executions = Vec::new();
        for (service, proc) in &self.procs {
            if matches!(service, Service::Worker(_)) {
                executions.extend(parse_executions(
                    &read_log(&proc.log)?,
                    &service.to_string(),
                ));
            }
        }
        Ok(executions)
    }

    /// Kills every process and removes the run directory.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.shut_down = true;
        for proc in self.procs.values_mut() {
            if let Some(mut process) = proc.process.take() {
                // A paused process must be continued to die promptly on some kernels.
                let _ = process.resume();
                process.kill_async().await;
            }
        }
        // Redis is gone, so nothing holds a file open on the fault filesystem.
        self.fault_disk = None;
        cleanup::remove_run_dir(&self.run_dir);
        cleanup::unregister(&self.live);
        Ok(())
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        if !self.shut_down {
            // Children die when their `Process` drops; the sweep also removes the run directory.
            cleanup::cleanup_blocking(&self.live);
        }
    }
}

/// Writes a file only its owner can read.
fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}
