//! The compose deployment: one compose project per service on the external network
//! `agent-system-net`, driven through the `docker` and compose CLIs as the justfile did.
//!
//! Each service is its own project (`agent-redis`, `agent-orchestrator`, `agent-worker`, and
//! the optional `agent-monitoring`), so restarting, rebuilding or scaling one never touches the
//! others. Compose v1 has no `up --wait`: [`wait_healthy`] polls `docker ps --filter
//! health=healthy`. Every compose command is echoed to stderr before it runs, as `just` echoes a
//! recipe line; no secret is ever on one of these command lines.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use crate::images::{self, ImageName, ImagesArgs};
use crate::secrets::{self, RedisTopology, RotationTarget, SecretsDir};
use crate::tools::{self, info_field};

/// The external network every service joins.
pub const NETWORK: &str = "agent-system-net";

/// The Redis container, fixed name.
pub const REDIS_CONTAINER: &str = "agent-redis";

/// `docker ps` columns of [`ps`] and of the diagnostics of [`wait_healthy`].
pub const PS_FORMAT: &str = "table {{.Names}}\t{{.Image}}\t{{.Status}}\t{{.Ports}}";

/// The containers [`ps`] shows: the three services (a single Redis or the cluster's nodes) and
/// Prometheus.
pub const PS_FILTERS: [&str; 5] = [
    "name=^agent-redis$",
    "name=^agent-redis-[0-9]-[0-9]$",
    "name=^agent-orchestrator$",
    "name=^agent-worker[-_]worker[-_]",
    "name=^agent-prometheus$",
];

/// Default of `HEALTH_TIMEOUT` (seconds) for [`wait_healthy`].
pub const DEFAULT_HEALTH_TIMEOUT_S: u64 = 120;

/// Shards of the Redis Cluster (`REDIS_SHARDS=3`), as compose/redis-cluster.yml and
/// k8s/redis-cluster/ define them: three, the fewest whose majority survives the loss of one primary (a failover
/// needs the votes of a majority of primaries).
pub const CLUSTER_SHARDS: u32 = 3;

/// Nodes per shard of the compose Redis Cluster: a primary and one replica.
pub const CLUSTER_MEMBERS: u32 = 2;

/// The compose Redis Cluster's project.
pub const CLUSTER_PROJECT: &str = "agent-redis-cluster";

/// The container of node `member` (from 1; 1 is the initial primary) of shard `shard` (from 1).
pub fn cluster_node(shard: u32, member: u32) -> String {
    format!("agent-redis-{shard}-{member}")
}

/// Every node of the compose Redis Cluster, shard by shard.
pub fn cluster_nodes() -> Vec<String> {
    (1..=CLUSTER_SHARDS)
        .flat_map(|shard| (1..=CLUSTER_MEMBERS).map(move |member| cluster_node(shard, member)))
        .collect()
}

/// Which Redis the compose deployment runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// `agent-redis` (compose/redis.yml).
    Single,
    /// The Redis Cluster of compose/redis-cluster.yml.
    Cluster,
}

impl Topology {
    /// `REDIS_SHARDS` when set (1 or [`CLUSTER_SHARDS`]); else the cluster when its containers
    /// or volumes exist (a deployment keeps its topology until `just clean`), else one Redis.
    pub fn current() -> anyhow::Result<Self> {
        match Self::parse(&std::env::var("REDIS_SHARDS").unwrap_or_default())? {
            Some(topology) => Ok(topology),
            None => Ok(
                if exists("container", &cluster_node(1, 1))
                    || exists("volume", &format!("{}-data", cluster_node(1, 1)))
                {
                    Topology::Cluster
                } else {
                    Topology::Single
                },
            ),
        }
    }

    /// `REDIS_SHARDS`: `None` when blank (the deployment decides).
    pub fn parse(setting: &str) -> anyhow::Result<Option<Self>> {
        match setting.trim() {
            "" => Ok(None),
            "1" => Ok(Some(Topology::Single)),
            shards if shards == CLUSTER_SHARDS.to_string() => Ok(Some(Topology::Cluster)),
            other => bail!(
                "REDIS_SHARDS={other}: the deployment runs one Redis (1) or a Redis \
                 Cluster of {CLUSTER_SHARDS} shards ({CLUSTER_SHARDS}), each a primary and a \
                 replica; a failover needs the votes of a majority of primaries, which 2 cannot \
                 give after losing one"
            ),
        }
    }

    /// The compose project of `service`: Redis's is this topology's.
    pub fn project(self, service: Service) -> Project {
        match service {
            Service::Redis => self.redis_project(),
            other => other.project(),
        }
    }

    /// The Redis project: `agent-redis` or [`CLUSTER_PROJECT`].
    pub fn redis_project(self) -> Project {
        match self {
            Topology::Single => Service::Redis.project(),
            Topology::Cluster => Project {
                name: CLUSTER_PROJECT.to_owned(),
                file: PathBuf::from("compose/redis-cluster.yml"),
            },
        }
    }

    /// What `services.env` tells the services.
    pub fn services(self) -> RedisTopology {
        match self {
            Topology::Single => RedisTopology::Single,
            Topology::Cluster => RedisTopology::Cluster {
                nodes: cluster_nodes()
                    .into_iter()
                    .map(|node| format!("{node}:6379"))
                    .collect(),
                shards: CLUSTER_SHARDS,
            },
        }
    }

    /// The Redis containers: `agent-redis`, or every node of the cluster.
    pub fn redis_containers(self) -> Vec<String> {
        match self {
            Topology::Single => vec![REDIS_CONTAINER.to_owned()],
            Topology::Cluster => cluster_nodes(),
        }
    }
}

/// One service of the deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// `agent-redis`.
    Redis,
    /// `agent-orchestrator`.
    Orchestrator,
    /// `agent-worker` (scaled).
    Worker,
}

impl Service {
    /// In start order.
    pub const ALL: [Service; 3] = [Service::Redis, Service::Orchestrator, Service::Worker];

    /// `redis`, `orchestrator` or `worker`.
    pub fn name(self) -> &'static str {
        match self {
            Service::Redis => "redis",
            Service::Orchestrator => "orchestrator",
            Service::Worker => "worker",
        }
    }

    /// Its compose project.
    pub fn project(self) -> Project {
        Project {
            name: format!("agent-{}", self.name()),
            file: PathBuf::from(format!("compose/{}.yml", self.name())),
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Service {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Service::ALL
            .into_iter()
            .find(|service| service.name() == s)
            .ok_or_else(|| {
                format!("unknown service '{s}' (expected redis, orchestrator or worker)")
            })
    }
}

/// A compose project and its file (relative to the workspace root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    /// `-p`, also the label `com.docker.compose.project` of its containers.
    pub name: String,
    /// `-f`.
    pub file: PathBuf,
}

impl Project {
    /// Prometheus, `compose/monitoring/compose.yml`.
    pub fn monitoring() -> Self {
        Project {
            name: "agent-monitoring".to_owned(),
            file: PathBuf::from("compose/monitoring/compose.yml"),
        }
    }

    fn label_filter(&self) -> String {
        format!("label=com.docker.compose.project={}", self.name)
    }
}

/// The compose deployment of the workspace at `root`.
#[derive(Debug, Clone)]
pub struct Deployment {
    root: PathBuf,
}

impl Default for Deployment {
    fn default() -> Self {
        Self::new(images::default_workspace_root())
    }
}

impl Deployment {
    /// The deployment described by `root/compose/`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The workspace root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `compose/secrets`.
    pub fn secrets(&self) -> SecretsDir {
        SecretsDir::compose(&self.root)
    }

    /// `compose/redis-users.acl.template`.
    pub fn acl_template(&self) -> PathBuf {
        self.root.join(secrets::ACL_TEMPLATE)
    }

    /// `_redis-secrets`: creates the missing passwords, derives the env files and the ACL file,
    /// and says when a running Redis needs a restart to read a changed ACL file. Returns the
    /// deployment's [`Topology`], which the recipe then follows.
    pub fn render_secrets(&self) -> anyhow::Result<Topology> {
        let topology = Topology::current()?;
        self.render_secrets_for(&self.secrets(), topology)?;
        Ok(topology)
    }

    /// [`Deployment::render_secrets`] into another directory.
    pub fn render_secrets_in(&self, dir: &SecretsDir) -> anyhow::Result<()> {
        self.render_secrets_for(dir, Topology::current()?)
    }

    fn render_secrets_for(&self, dir: &SecretsDir, topology: Topology) -> anyhow::Result<()> {
        let rendered = secrets::render(
            dir,
            &self.acl_template(),
            &topology.services(),
            &mut io::stdout().lock(),
        )?;
        if let Some(hint) = rendered.restart_hint()
            && topology
                .redis_containers()
                .iter()
                .any(|name| container_running(name))
        {
            println!("{hint}");
        }
        Ok(())
    }

    /// `{docker compose | docker-compose} -p PROJECT -f FILE ARGS...`, echoed, in the workspace root.
    pub fn compose(&self, project: &Project, args: &[&str]) -> anyhow::Result<()> {
        let program = compose_program();
        let mut command = Command::new(&program[0]);
        command
            .args(&program[1..])
            .arg("-p")
            .arg(&project.name)
            .arg("-f")
            .arg(&project.file)
            .args(args)
            .current_dir(&self.root);
        eprintln!(
            "{} -p {} -f {} {}",
            program.join(" "),
            project.name,
            project.file.display(),
            args.join(" ")
        );
        let status = command
            .status()
            .with_context(|| format!("running {}", program.join(" ")))?;
        ensure!(
            status.success(),
            "{} -p {} failed ({status})",
            program.join(" "),
            project.name
        );
        Ok(())
    }

    /// Images for the deployment: `just images`. With `REDIS_IMAGE` naming another image (and no
    /// `--only`), the user brings their own Redis and only the orchestrator and the worker are
    /// built. The Debian binaries an image needs are checked (and installed when root) first.
    pub fn images(&self, mut args: ImagesArgs) -> anyhow::Result<()> {
        tools::require_docker()?;
        if args.only.is_empty() {
            let redis_image = std::env::var("REDIS_IMAGE").unwrap_or_default();
            if !redis_image.is_empty() && redis_image != ImageName::Redis.reference() {
                args.only = vec![ImageName::Orchestrator, ImageName::Worker];
            }
        }
        let wanted = |name| args.only.is_empty() || args.only.contains(&name);
        if wanted(ImageName::Redis) {
            tools::require_redis_server()?;
        }
        if args.only.contains(&ImageName::Prometheus) {
            tools::require_prometheus()?;
        }
        images::run(&args)
    }

    fn default_images_args(&self) -> ImagesArgs {
        ImagesArgs {
            force: false,
            no_cargo_build: false,
            keep_debug_info: false,
            only: Vec::new(),
            workspace_root: self.root.clone(),
        }
    }

    /// `just up`: images, secrets, network, then redis (with `REDIS_SHARDS=3` a Redis Cluster,
    /// formed here) → orchestrator → `workers` workers, each waited for until healthy; prints
    /// the containers and where to reach them.
    pub fn up(&self, workers: usize) -> anyhow::Result<()> {
        let topology = Topology::current()?;
        let other = match topology {
            Topology::Single => Topology::Cluster,
            Topology::Cluster => Topology::Single,
        };
        if let Some(running) = other
            .redis_containers()
            .into_iter()
            .find(|name| exists("container", name))
        {
            bail!(
                "{running} exists: the deployment runs {}; `just down` first (the data stays in \
                 its volumes)",
                match other {
                    Topology::Single => "one Redis",
                    Topology::Cluster => "a Redis Cluster",
                }
            );
        }
        self.images(self.default_images_args())?;
        self.render_secrets_for(&self.secrets(), topology)?;
        ensure_network()?;
        let redis = topology.redis_project();
        let [_, orchestrator, worker] = Service::ALL.map(Service::project);
        self.compose(&redis, &["up", "-d"])?;
        wait_healthy(&redis, topology.redis_containers().len())?;
        if topology == Topology::Cluster {
            form_cluster()?;
        }
        self.compose(&orchestrator, &["up", "-d"])?;
        self.compose(
            &worker,
            &["up", "-d", "--scale", &format!("worker={workers}")],
        )?;
        wait_healthy(&orchestrator, 1)?;
        wait_healthy(&worker, workers)?;
        ps()?;
        let api_port = env_or("ORCHESTRATOR_HOST_PORT", "8001");
        println!();
        match topology {
            Topology::Single => println!(
                "orchestrator: http://localhost:{api_port}   redis: {}:{} (password required: {}/)",
                env_or("REDIS_HOST_BIND", "127.0.0.1"),
                env_or("REDIS_HOST_PORT", "6380"),
                secrets::SECRETS_DIR
            ),
            Topology::Cluster => println!(
                "orchestrator: http://localhost:{api_port}   redis: a cluster of \
                 {CLUSTER_SHARDS} shards (primary + replica) on {NETWORK}, not published: \
                 docker exec {} redis-cli -c",
                cluster_node(1, 1)
            ),
        }
        println!(
            "try: curl -sS -X POST http://localhost:{api_port}/tasks -H 'content-type: \
             application/json' -d '{{\"description\":\"hello\",\"priority\":5}}'"
        );
        Ok(())
    }

    /// `just restart SERVICE`: in place, then waits for as many healthy containers as run.
    pub fn restart(&self, service: Service) -> anyhow::Result<()> {
        tools::require_docker()?;
        let project = self.render_secrets()?.project(service);
        self.compose(&project, &["restart"])?;
        wait_healthy(&project, running_containers(&project)?)
    }

    /// `just upgrade SERVICE`: rebuilds stale images and recreates the service if its image
    /// changed; the worker keeps its replica count (at least one).
    pub fn upgrade(&self, service: Service) -> anyhow::Result<()> {
        self.images(self.default_images_args())?;
        let project = self.render_secrets()?.project(service);
        let scale;
        let mut args = vec!["up", "-d"];
        if service == Service::Worker {
            scale = format!("worker={}", running_containers(&project)?.max(1));
            args.extend(["--scale", scale.as_str()]);
        }
        self.compose(&project, &args)?;
        wait_healthy(&project, running_containers(&project)?)
    }

    /// `just scale N`: N worker containers; the running ones are kept.
    pub fn scale(&self, workers: usize) -> anyhow::Result<()> {
        tools::require_docker()?;
        self.render_secrets()?;
        let project = Service::Worker.project();
        let scale = format!("worker={workers}");
        self.compose(&project, &["up", "-d", "--no-recreate", "--scale", &scale])?;
        wait_healthy(&project, workers)
    }

    /// `just logs [SERVICE]`: follows one service, or all three (one follower per project; Ctrl-C
    /// reaches them all, they share the terminal's process group).
    pub fn logs(&self, service: Option<Service>) -> anyhow::Result<()> {
        tools::require_docker()?;
        let topology = self.render_secrets()?;
        let services = service.map_or(Service::ALL.to_vec(), |s| vec![s]);
        let program = compose_program();
        let mut followers: Vec<Child> = Vec::new();
        for service in services {
            let project = topology.project(service);
            let child = Command::new(&program[0])
                .args(&program[1..])
                .arg("-p")
                .arg(&project.name)
                .arg("-f")
                .arg(&project.file)
                .args(["logs", "-f", "--tail=100"])
                .current_dir(&self.root)
                .spawn()
                .with_context(|| format!("running {}", program.join(" ")))?;
            followers.push(child);
        }
        for mut child in followers {
            child.wait().context("waiting for a log follower")?;
        }
        Ok(())
    }

    /// `just monitoring-up`: Prometheus on the network, waited for until healthy.
    pub fn monitoring_up(&self) -> anyhow::Result<()> {
        let mut args = self.default_images_args();
        args.only = vec![ImageName::Prometheus];
        self.images(args)?;
        ensure_network()?;
        let project = Project::monitoring();
        self.compose(&project, &["up", "-d"])?;
        wait_healthy(&project, 1)?;
        println!(
            "prometheus: http://127.0.0.1:{}/targets and /alerts; Grafana dashboard to import: \
             compose/monitoring/dashboards/agent-system.json",
            env_or("PROMETHEUS_HOST_PORT", "9090")
        );
        Ok(())
    }

    /// `just redis-rotate-password`: see [`secrets::rotate_agent_password`].
    pub fn rotate_redis_password(&self) -> anyhow::Result<()> {
        tools::require_docker()?;
        let topology = self.render_secrets()?;
        secrets::rotate_agent_password(
            &self.secrets(),
            &self.acl_template(),
            &topology.services(),
            &mut DockerRedis {
                deployment: self,
                containers: topology.redis_containers(),
            },
            &mut io::stdout().lock(),
        )
    }
}

/// The running deployment as a [`RotationTarget`]: `redis-cli` inside each Redis container
/// (`agent-redis`, or every node of the cluster: each has its own users), which authenticates
/// through the container's `REDISCLI_AUTH`.
struct DockerRedis<'a> {
    deployment: &'a Deployment,
    containers: Vec<String>,
}

impl RotationTarget for DockerRedis<'_> {
    fn redis_running(&mut self) -> anyhow::Result<bool> {
        Ok(self.containers.iter().all(|name| container_running(name)))
    }

    /// The first reply that is not `OK` (and the nodes after it are left as they are: the
    /// rotation stops and finishes on the next run), else `OK`.
    fn acl_setuser(&mut self, rule: &str) -> anyhow::Result<String> {
        for container in &self.containers {
            // The command goes to redis-cli on stdin, so not even a hash shows in `ps`; in this
            // mode redis-cli exits 0 whatever Redis answers, so the reply is what tells.
            let output = run_with_stdin(
                Command::new("docker").args(["exec", "-i", container, "redis-cli"]),
                &format!("ACL SETUSER {} {rule}\n", secrets::AGENT_USER),
            )
            .with_context(|| format!("docker exec {container} redis-cli"))?;
            let reply = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            if reply != "OK" {
                return Ok(reply);
            }
        }
        Ok("OK".to_owned())
    }

    fn recreate_services(&mut self) -> anyhow::Result<()> {
        let [_, orchestrator, worker] = Service::ALL.map(Service::project);
        let workers = running_containers(&worker)?;
        self.deployment.compose(&orchestrator, &["up", "-d"])?;
        wait_healthy(&orchestrator, 1)?;
        if workers > 0 {
            let scale = format!("worker={workers}");
            self.deployment
                .compose(&worker, &["up", "-d", "--scale", &scale])?;
            wait_healthy(&worker, workers)?;
        }
        Ok(())
    }
}

/// Runs `command` with `input` on its stdin and its stderr passed through; fails unless it exits 0.
pub fn run_with_stdin(command: &mut Command, input: &str) -> anyhow::Result<std::process::Output> {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    stdin.write_all(input.as_bytes())?;
    drop(stdin);
    let output = child.wait_with_output()?;
    ensure!(output.status.success(), "exited with {}", output.status);
    Ok(output)
}

/// `docker compose` when the v2 plugin answers, else `docker-compose` (v1.29).
pub fn compose_program() -> &'static [String] {
    static PROGRAM: OnceLock<Vec<String>> = OnceLock::new();
    PROGRAM.get_or_init(|| {
        if tools::succeeds("docker", &["compose", "version"]) {
            vec!["docker".to_owned(), "compose".to_owned()]
        } else {
            vec!["docker-compose".to_owned()]
        }
    })
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

fn docker_output(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running docker")?;
    ensure!(
        output.status.success(),
        "docker {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Whether the docker object `kind` (`container`, `volume`, `network`) named `name` exists.
fn exists(kind: &str, name: &str) -> bool {
    tools::succeeds("docker", &[kind, "inspect", name])
}

/// `redis-cli ARGS` inside `container` (as the admin, through its `REDISCLI_AUTH`); its output.
fn redis_cli(container: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut command = vec!["exec", container, "redis-cli"];
    command.extend(args);
    docker_output(&command)
}

/// Forms the compose Redis Cluster from its fresh nodes, and waits until it serves: the initial
/// primaries `agent-redis-S-1` get equal slot ranges in shard order (`redis-cli --cluster
/// create`), then each `agent-redis-S-2` joins as the replica of shard S. Steps already done
/// (a cluster formed by an earlier `up`, whose roles a failover may have swapped since) are
/// skipped, so `up` is idempotent.
pub fn form_cluster() -> anyhow::Result<()> {
    let first = cluster_node(1, 1);
    let known = |node: &str| -> anyhow::Result<u32> {
        let info = redis_cli(node, &["cluster", "info"])?;
        info_field(&info, "cluster_known_nodes")
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("{node}: no cluster_known_nodes in CLUSTER INFO"))
    };
    let primaries: Vec<String> = (1..=CLUSTER_SHARDS)
        .map(|shard| format!("{}:6379", cluster_node(shard, 1)))
        .collect();
    if known(&first)? == 1 {
        let mut args = vec!["--cluster", "create"];
        args.extend(primaries.iter().map(String::as_str));
        args.push("--cluster-yes");
        eprintln!("docker exec {first} redis-cli {}", args.join(" "));
        redis_cli(&first, &args).context("forming the Redis Cluster")?;
    }
    for shard in 1..=CLUSTER_SHARDS {
        let replica = cluster_node(shard, 2);
        if known(&replica)? > 1 {
            continue;
        }
        let primary = cluster_node(shard, 1);
        let id = redis_cli(&primary, &["cluster", "myid"])?.trim().to_owned();
        let args = [
            "--cluster",
            "add-node",
            &format!("{replica}:6379"),
            &format!("{primary}:6379"),
            "--cluster-slave",
            "--cluster-master-id",
            &id,
        ];
        eprintln!("docker exec {first} redis-cli {}", args.join(" "));
        redis_cli(&first, &args)
            .with_context(|| format!("adding {replica} as the replica of shard {shard}"))?;
    }
    wait_cluster_serving()
}

/// Waits until every node sees the whole cluster `ok` and every replica's link to its primary
/// is up, for `HEALTH_TIMEOUT` seconds.
fn wait_cluster_serving() -> anyhow::Result<()> {
    let nodes = cluster_nodes();
    let deadline = Instant::now() + Duration::from_secs(health_timeout_s()?);
    loop {
        let mut waiting = Vec::new();
        for node in &nodes {
            let info = redis_cli(node, &["cluster", "info"]).unwrap_or_default();
            let replication = redis_cli(node, &["info", "replication"]).unwrap_or_default();
            let ok = info_field(&info, "cluster_state") == Some("ok")
                && info_field(&info, "cluster_known_nodes") == Some(&nodes.len().to_string());
            let linked = match info_field(&replication, "role") {
                Some("master") => true,
                Some(_) => info_field(&replication, "master_link_status") == Some("up"),
                None => false,
            };
            if !(ok && linked) {
                waiting.push(node.as_str());
            }
        }
        if waiting.is_empty() {
            println!(
                "Redis Cluster: {CLUSTER_SHARDS} shards, {} nodes, every slot served",
                nodes.len()
            );
            return Ok(());
        }
        if Instant::now() >= deadline {
            let view = redis_cli(&nodes[0], &["cluster", "nodes"]).unwrap_or_default();
            bail!(
                "the Redis Cluster is not serving: {} not ok or not linked to a primary; its \
                 view:\n{view}",
                waiting.join(", ")
            );
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// Whether the container `name` exists and runs.
pub fn container_running(name: &str) -> bool {
    docker_output(&["inspect", "--format", "{{.State.Running}}", name])
        .is_ok_and(|out| out.trim() == "true")
}

/// How many containers of `project` run.
pub fn running_containers(project: &Project) -> anyhow::Result<usize> {
    Ok(
        docker_output(&["ps", "-q", "--filter", &project.label_filter()])?
            .lines()
            .count(),
    )
}

fn healthy_containers(project: &Project) -> anyhow::Result<usize> {
    Ok(docker_output(&[
        "ps",
        "-q",
        "--filter",
        &project.label_filter(),
        "--filter",
        "health=healthy",
    ])?
    .lines()
    .count())
}

/// Waits until `expected` containers of `project` run and are healthy, for `HEALTH_TIMEOUT`
/// seconds (default [`DEFAULT_HEALTH_TIMEOUT_S`]); on timeout prints their state and last log
/// lines to stderr and fails.
pub fn wait_healthy(project: &Project, expected: usize) -> anyhow::Result<()> {
    let timeout_s = health_timeout_s()?;
    let deadline = Instant::now() + Duration::from_secs(timeout_s);
    loop {
        let healthy = healthy_containers(project)?;
        if healthy >= expected {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let filter = project.label_filter();
            let _ = Command::new("docker")
                .args(["ps", "-a", "--filter", &filter, "--format", PS_FORMAT])
                .stdout(io::stderr())
                .status();
            for id in docker_output(&["ps", "-aq", "--filter", &filter])?.split_whitespace() {
                let _ = Command::new("docker")
                    .args(["logs", "--tail", "20", id])
                    .stdout(io::stderr())
                    .status();
            }
            bail!(
                "{}: {healthy} of {expected} containers healthy after {timeout_s}s (their state \
                 and last log lines are above)",
                project.name
            );
        }
        thread::sleep(Duration::from_secs(1));
    }
}

/// `HEALTH_TIMEOUT` (seconds), default [`DEFAULT_HEALTH_TIMEOUT_S`].
fn health_timeout_s() -> anyhow::Result<u64> {
    match std::env::var("HEALTH_TIMEOUT") {
        Ok(text) if !text.is_empty() => text
            .parse::<u64>()
            .with_context(|| format!("HEALTH_TIMEOUT={text:?} is not a number of seconds")),
        _ => Ok(DEFAULT_HEALTH_TIMEOUT_S),
    }
}

/// Creates the external network [`NETWORK`] unless it exists.
pub fn ensure_network() -> anyhow::Result<()> {
    if tools::succeeds("docker", &["network", "inspect", NETWORK]) {
        return Ok(());
    }
    docker_output(&["network", "create", NETWORK])?;
    println!("created network {NETWORK}");
    Ok(())
}

/// Prints the service containers (and Prometheus) with their health and published ports.
pub fn ps() -> anyhow::Result<()> {
    let mut args = vec!["ps", "-a"];
    for filter in &PS_FILTERS {
        args.extend(["--filter", filter]);
    }
    args.extend(["--format", PS_FORMAT]);
    print!("{}", docker_output(&args)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_shards_is_one_or_three_and_says_why_not_two() {
        assert_eq!(Topology::parse(" ").expect("blank"), None);
        assert_eq!(Topology::parse("1").expect("1"), Some(Topology::Single));
        assert_eq!(Topology::parse("3").expect("3"), Some(Topology::Cluster));
        for wrong in ["2", "4", "three", "-1"] {
            let err = Topology::parse(wrong).expect_err(wrong).to_string();
            assert!(err.starts_with(&format!("REDIS_SHARDS={wrong}: ")), "{err}");
            assert!(err.contains("majority of primaries"), "{err}");
        }
        assert_eq!(Topology::Cluster.redis_containers().len(), 6);
        assert_eq!(Topology::Cluster.redis_containers(), cluster_nodes());
        assert_eq!(
            cluster_nodes(),
            [
                "agent-redis-1-1",
                "agent-redis-1-2",
                "agent-redis-2-1",
                "agent-redis-2-2",
                "agent-redis-3-1",
                "agent-redis-3-2"
            ]
        );
        let root = images::default_workspace_root();
        assert!(root.join(Topology::Cluster.redis_project().file).is_file());
    }

    #[test]
    fn info_fields_are_read_from_crlf_replies() {
        let info = "# Cluster\r\ncluster_state:ok\r\ncluster_known_nodes:6\r\n";
        assert_eq!(info_field(info, "cluster_state"), Some("ok"));
        assert_eq!(info_field(info, "cluster_known_nodes"), Some("6"));
        assert_eq!(info_field(info, "cluster_known"), None);
    }

    #[test]
    fn services_parse_by_name_and_map_to_their_compose_project() {
        for service in Service::ALL {
            assert_eq!(service.name().parse::<Service>(), Ok(service));
        }
        assert_eq!(
            "postgres".parse::<Service>(),
            Err("unknown service 'postgres' (expected redis, orchestrator or worker)".to_owned())
        );
        let worker = Service::Worker.project();
        assert_eq!(worker.name, "agent-worker");
        assert_eq!(worker.file, Path::new("compose/worker.yml"));
        let root = images::default_workspace_root();
        for project in Service::ALL
            .map(Service::project)
            .into_iter()
            .chain([Project::monitoring()])
        {
            assert!(
                root.join(&project.file).is_file(),
                "{}",
                project.file.display()
            );
        }
    }
}
