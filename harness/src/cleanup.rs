//! Nothing outlives a run: labels, an owner token, a sweep of leftovers and a Ctrl-C handler.
//!
//! Every container, network and volume a docker-runtime run creates carries the labels
//! [`LABEL_HARNESS`], [`LABEL_RUN`] (the run id) and [`LABEL_OWNER`] (the pid and start time of
//! the harness process). Every process-runtime run keeps its files and child pids in a run
//! directory holding the same owner token. Cleanup happens in three layers:
//!
//! 1. the normal path: `Cluster::shutdown` removes what the run created;
//! 2. `Drop` of a cluster that was not shut down (error, panic): a synchronous sweep of the
//!    run's label / run directory, on a thread of its own so it works inside or outside Tokio;
//! 3. [`install_interrupt_handler`]: Ctrl-C / SIGTERM sweeps every run still registered in this
//!    process, then exits with 130. Goose (used by the load) would otherwise take over SIGINT.
//!
//! And before creating anything, [`sweep_leftovers`] removes resources whose owner process is
//! gone (a harness that was SIGKILLed), so a second run never meets a leftover.

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    sync::{Mutex, OnceLock},
};

use anyhow::Context;
use bollard::{
    Docker,
    query_parameters::{
        ListContainersOptionsBuilder, ListNetworksOptionsBuilder, ListVolumesOptionsBuilder,
        RemoveContainerOptionsBuilder,
    },
};

/// Label present on everything the harness creates.
pub const LABEL_HARNESS: &str = "agent-system.harness";
/// Label holding the run id.
pub const LABEL_RUN: &str = "agent-system.harness-run";
/// Label holding the owner token (`pid-starttime`) of the harness process.
pub const LABEL_OWNER: &str = "agent-system.harness-owner";

/// Identifies this process across pid reuse: `{pid}-{start time in clock ticks}`.
pub fn owner_token() -> String {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN
        .get_or_init(|| {
            let pid = std::process::id();
            format!("{pid}-{}", process_start_time(pid).unwrap_or(0))
        })
        .clone()
}

/// Whether the process that wrote `token` is still running.
pub fn owner_alive(token: &str) -> bool {
    let Some((pid, start)) = token.split_once('-') else {
        return false;
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
        return false;
    };
    process_start_time(pid) == Some(start)
}

/// Start time of a live process in clock ticks since boot (`/proc/<pid>/stat`, field 22);
/// `None` for a process that does not exist or is a zombie (dead, not yet reaped).
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip past its last ')'.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?;
    if matches!(state, "Z" | "X" | "x") {
        return None;
    }
    // Field 3 (state) was taken; field 22 is 18 further on.
    fields.nth(18)?.parse().ok()
}

/// The labels every docker resource of run `run_id` carries.
pub fn run_labels(run_id: &str) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_HARNESS.to_string(), "true".to_string()),
        (LABEL_RUN.to_string(), run_id.to_string()),
        (LABEL_OWNER.to_string(), owner_token()),
    ])
}

/// Connects to the local Docker engine and negotiates the API version, so a client newer than the
/// engine (here: bollard 1.53 against Docker 20.10's 1.41) still talks to it.
pub async fn docker_client() -> anyhow::Result<Docker> {
    let docker =
        Docker::connect_with_local_defaults().context("connecting to the docker engine")?;
    let docker = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        docker.negotiate_version(),
    )
    .await
    .context("the docker engine did not answer within 5 s")?
    .context("negotiating the docker API version")?;
    Ok(docker)
}

/// What a sweep removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    /// Container names.
    pub containers: Vec<String>,
    /// Network names.
    pub networks: Vec<String>,
    /// Volume names.
    pub volumes: Vec<String>,
}

impl Swept {
    /// True when nothing was found.
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty() && self.networks.is_empty() && self.volumes.is_empty()
    }
}

/// Everything carrying `label` (a `key=value` filter): containers, networks, volumes.
pub async fn list_labelled(docker: &Docker, label: &str) -> anyhow::Result<Swept> {
    let filters = HashMap::from([("label".to_string(), vec![label.to_string()])]);
    let containers = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .context("listing containers")?;
    let networks = docker
        .list_networks(Some(
            ListNetworksOptionsBuilder::default()
                .filters(&filters)
                .build(),
        ))
        .await
        .context("listing networks")?;
    let volumes = docker
        .list_volumes(Some(
            ListVolumesOptionsBuilder::default()
                .filters(&filters)
                .build(),
        ))
        .await
        .context("listing volumes")?;
    Ok(Swept {
        containers: containers
            .into_iter()
            .filter_map(|c| c.id.or_else(|| c.names.and_then(|n| n.into_iter().next())))
            .collect(),
        networks: networks.into_iter().filter_map(|n| n.name).collect(),
        volumes: volumes
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name)
            .collect(),
    })
}

/// Removes every container, network and volume of run `run_id`. Containers go first (force,
/// with their anonymous volumes) because networks and volumes in use cannot be removed.
pub async fn sweep_run(docker: &Docker, run_id: &str) -> anyhow::Result<Swept> {
    remove_labelled(docker, &format!("{LABEL_RUN}={run_id}")).await
}

async fn remove_labelled(docker: &Docker, label: &str) -> anyhow::Result<Swept> {
    let found = list_labelled(docker, label).await?;
    let mut errors = Vec::new();
    let remove_options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    for id in &found.containers {
        if let Err(e) = docker
            .remove_container(id, Some(remove_options.clone()))
            .await
            && !is_not_found(&e)
        {
            errors.push(format!("container {id}: {e}"));
        }
    }
    for name in &found.networks {
        if let Err(e) = docker.remove_network(name).await
            && !is_not_found(&e)
        {
            errors.push(format!("network {name}: {e}"));
        }
    }
    for name in &found.volumes {
        if let Err(e) = docker
            .remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>)
            .await
            && !is_not_found(&e)
        {
            errors.push(format!("volume {name}: {e}"));
        }
    }
    if errors.is_empty() {
        Ok(found)
    } else {
        anyhow::bail!("could not remove {}", errors.join("; "))
    }
}

/// Whether a Docker error only says the object is already gone.
pub fn is_not_found(error: &bollard::errors::Error) -> bool {
    matches!(
        error,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Removes docker resources and process-runtime run directories whose owning harness process no
/// longer exists. Resources of live harness processes (a concurrent run) are left alone.
pub async fn sweep_leftovers(docker: Option<&Docker>) -> anyhow::Result<Swept> {
    let mut swept = Swept::default();
    if let Some(docker) = docker {
        let all = list_labelled(docker, LABEL_HARNESS).await?;
        if !all.is_empty() {
            let runs = dead_runs(docker).await?;
            for run in runs {
                let removed = sweep_run(docker, &run).await?;
                swept.containers.extend(removed.containers);
                swept.networks.extend(removed.networks);
                swept.volumes.extend(removed.volumes);
            }
        }
    }
    sweep_dead_run_dirs();
    Ok(swept)
}

/// Run ids whose owner label names a dead process.
async fn dead_runs(docker: &Docker) -> anyhow::Result<BTreeSet<String>> {
    let filters = HashMap::from([("label".to_string(), vec![LABEL_HARNESS.to_string()])]);
    let mut runs = BTreeSet::new();
    let mut consider = |labels: Option<HashMap<String, String>>| {
        if let Some(labels) = labels
            && let Some(run) = labels.get(LABEL_RUN)
        {
            let alive = labels.get(LABEL_OWNER).is_some_and(|o| owner_alive(o));
            if !alive {
                runs.insert(run.clone());
            }
        }
    };
    for c in docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await?
    {
        consider(c.labels);
    }
    for n in docker
        .list_networks(Some(
            ListNetworksOptionsBuilder::default()
                .filters(&filters)
                .build(),
        ))
        .await?
    {
        consider(n.labels);
    }
    for v in docker
        .list_volumes(Some(
            ListVolumesOptionsBuilder::default()
                .filters(&filters)
                .build(),
        ))
        .await?
        .volumes
        .unwrap_or_default()
    {
        consider(Some(v.labels));
    }
    Ok(runs)
}

// ---------------------------------------------------------------------------------------------
// Process runtime: run directories.

/// Parent of the process runtime's run directories.
pub fn runs_root() -> PathBuf {
    std::env::temp_dir().join("agent-system-harness")
}

/// File in a run directory naming the owner token.
const OWNER_FILE: &str = "owner";
/// File in a run directory listing `pid program` of every child started.
const PIDS_FILE: &str = "pids";

/// Creates the run directory of a process-runtime run, stamped with this process's owner token.
pub fn create_run_dir(run_id: &str) -> anyhow::Result<PathBuf> {
    let dir = runs_root().join(run_id);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join(OWNER_FILE), owner_token())
        .with_context(|| format!("writing the owner of {}", dir.display()))?;
    Ok(dir)
}

/// Records a child process so a later sweep can kill it if this harness dies first.
pub fn record_child(run_dir: &Path, pid: u32, program: &str) {
    use std::io::Write;
    let line = format!("{pid} {program}\n");
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_dir.join(PIDS_FILE))
        .and_then(|mut f| f.write_all(line.as_bytes()));
}

/// Kills the recorded children of a run directory (only pids whose command line still names
/// the recorded program, to survive pid reuse) and removes the directory.
pub fn remove_run_dir(dir: &Path) {
    if let Ok(pids) = std::fs::read_to_string(dir.join(PIDS_FILE)) {
        for line in pids.lines() {
            let Some((pid, program)) = line.split_once(' ') else {
                continue;
            };
            let Ok(pid) = pid.parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let name = Path::new(program)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if !name.is_empty() && String::from_utf8_lossy(&cmdline).contains(&name) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn sweep_dead_run_dirs() {
    let Ok(entries) = std::fs::read_dir(runs_root()) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let owner = std::fs::read_to_string(dir.join(OWNER_FILE)).unwrap_or_default();
        if !owner_alive(owner.trim()) {
            remove_run_dir(&dir);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Live runs of this process, for the interrupt handler and for Drop.

/// Something a run created that an emergency cleanup must remove.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LiveRun {
    /// Docker resources labelled with this run id.
    Docker(String),
    /// A process-runtime run directory.
    Process(PathBuf),
}

fn live_runs() -> &'static Mutex<BTreeSet<LiveRun>> {
    static LIVE: OnceLock<Mutex<BTreeSet<LiveRun>>> = OnceLock::new();
    LIVE.get_or_init(Default::default)
}

/// Registers a run for emergency cleanup.
pub fn register(run: LiveRun) {
    live_runs()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(run);
}

/// Unregisters a run that was cleaned up normally.
pub fn unregister(run: &LiveRun) {
    live_runs()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(run);
}

/// Removes a run's resources synchronously, from any context (inside or outside a Tokio
/// runtime, during a panic): the work happens on a fresh thread with its own runtime.
pub fn cleanup_blocking(run: &LiveRun) {
    let owned = run.clone();
    let worker = std::thread::spawn(move || match &owned {
        LiveRun::Process(dir) => remove_run_dir(dir),
        LiveRun::Docker(run_id) => {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                eprintln!("harness: cannot build a runtime to clean up run {run_id}");
                return;
            };
            runtime.block_on(async {
                match docker_client().await {
                    Ok(docker) => {
                        if let Err(e) = sweep_run(&docker, run_id).await {
                            eprintln!("harness: cleaning up run {run_id}: {e:#}");
                        }
                    }
                    Err(e) => eprintln!("harness: cleaning up run {run_id}: {e:#}"),
                }
            });
        }
    });
    let _ = worker.join();
    unregister(run);
}

/// Installs the Ctrl-C / SIGTERM handler: it removes every registered run's resources and exits
/// with status 130. Idempotent. Install it before the first load runs, so goose's own handler
/// (which only stops the load) is not the one that gets the signal.
pub fn install_interrupt_handler() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let result = ctrlc::set_handler(|| {
            eprintln!("\nharness: interrupted, removing everything this run created ...");
            let runs: Vec<LiveRun> = live_runs()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned()
                .collect();
            for run in &runs {
                cleanup_blocking(run);
            }
            eprintln!("harness: cleaned up {} run(s)", runs.len());
            std::process::exit(130);
        });
        if let Err(e) = result {
            eprintln!("harness: could not install the Ctrl-C handler: {e}");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_made_up_one_is_not() {
        assert!(owner_alive(&owner_token()), "own token {}", owner_token());
        assert!(!owner_alive("999999999-1"));
        assert!(!owner_alive("garbage"));
        let pid = std::process::id();
        assert!(
            !owner_alive(&format!("{pid}-1")),
            "same pid, other start time"
        );
    }

    #[test]
    fn a_run_dir_of_a_dead_owner_is_swept() {
        let dir = create_run_dir(&format!("sweep-test-{}", uuid::Uuid::new_v4())).unwrap();
        std::fs::write(dir.join(OWNER_FILE), "999999999-1").unwrap();
        sweep_dead_run_dirs();
        assert!(!dir.exists(), "{} should have been removed", dir.display());
    }
}
