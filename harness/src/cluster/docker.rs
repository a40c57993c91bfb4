//! Docker runtime: the services as containers on a fresh, uniquely named network.
//!
//! Redis (`agent-redis:latest`), the orchestrator and the workers are started with
//! testcontainers from locally built images (nothing is pulled). Redis keeps its data on a named
//! volume, so kill + start replays the AOF, and joins the network under the alias `agent-redis`
//! (testcontainers has no alias API, so the harness reconnects it through bollard). Ports are
//! published on 127.0.0.1 only: Redis and the workers on random host ports that are re-read after
//! every start, the orchestrator on a fixed port picked at creation so its URL survives restarts.
//!
//! The engine on the reference machine speaks API 1.41 (Docker 20.10). Testcontainers 0.28's
//! bollard 0.21 does not put its (newer) version in request paths, so the engine answers at its
//! own version; the harness's own client negotiates explicitly.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::Duration,
};

use anyhow::{Context, bail};
use bollard::{
    Docker,
    models::{
        EndpointSettings, HostConfig, NetworkConnectRequest, NetworkCreateRequest,
        NetworkDisconnectRequest, PortBinding, VolumeCreateRequest,
    },
    query_parameters::{
        KillContainerOptionsBuilder, LogsOptionsBuilder, StartContainerOptions,
        StopContainerOptionsBuilder,
    },
};
use futures::StreamExt;
use testcontainers::{
    ContainerAsync, GenericImage, ImageExt,
    core::{IntoContainerPort, Mount, WaitFor},
    runners::AsyncRunner,
};

use super::{ClusterSpec, READY_TIMEOUT, Service};
use crate::{
    cleanup::{self, LiveRun},
    executions::{Execution, parse_executions},
};

/// Network alias under which the services reach Redis.
pub const REDIS_ALIAS: &str = "agent-redis";
/// Redis image (built by `cargo xtask images`).
pub const REDIS_IMAGE: (&str, &str) = ("agent-redis", "latest");
/// Orchestrator image.
pub const ORCHESTRATOR_IMAGE: (&str, &str) = ("agent-orchestrator", "latest");
/// Worker image.
pub const WORKER_IMAGE: (&str, &str) = ("agent-worker", "latest");

const REDIS_PORT: u16 = 6379;
const ORCHESTRATOR_PORT: u16 = 8000;
const METRICS_PORT: u16 = 9000;

/// The docker side of a [`super::Cluster`].
pub struct DockerCluster {
    docker: Docker,
    spec: ClusterSpec,
    network: String,
    volume: String,
    labels: HashMap<String, String>,
    orchestrator_host_port: u16,
    containers: BTreeMap<Service, ContainerAsync<GenericImage>>,
    /// Current host port of each service's main port; refreshed after starts and reconnects
    /// (shared with readiness polling, which holds `&self`).
    host_ports: Mutex<HashMap<Service, u16>>,
    /// The last address each service had on the run's network (link faults name peers that are
    /// down by it).
    addresses: Mutex<HashMap<Service, std::net::Ipv4Addr>>,
    live: LiveRun,
    shut_down: bool,
    /// Redis's data on the fault filesystem instead of the volume (dropped, so unmounted, after
    /// the containers are gone).
    fault_disk: Option<super::disk::FaultDisk>,
    /// Redis's shiftable wall clock, for `clock-jump`.
    clock: Option<super::clock::ClockShift>,
    /// `delay`: each client service's proxy to Redis, the run network's gateway address they
    /// listen on, and Redis's host port (fixed for the run, so a proxy survives Redis restarts).
    proxies: BTreeMap<Service, super::proxy::LinkProxy>,
    gateway: Option<std::net::Ipv4Addr>,
    redis_host_port: u16,
}

impl DockerCluster {
    /// Sweeps leftovers of dead harness runs, then creates this run's network and Redis volume.
    pub async fn create(spec: &ClusterSpec) -> anyhow::Result<Self> {
        let docker = cleanup::docker_client().await?;
        let swept = cleanup::sweep_leftovers(Some(&docker))
            .await
            .context("removing leftovers of earlier runs")?;
        if !swept.is_empty() {
            tracing::info!(?swept, "removed leftovers of earlier harness runs");
        }
        let live = LiveRun::Docker(spec.run_id.clone());
        cleanup::register(live.clone());
        let labels = cleanup::run_labels(&spec.run_id);
        let network = format!("agent-harness-{}", spec.run_id);
        let volume = format!("agent-harness-{}-redis-data", spec.run_id);
        // Built before anything is created, so a failure below is cleaned up by Drop.
        let mut cluster = DockerCluster {
            docker: docker.clone(),
            spec: spec.clone(),
            network: network.clone(),
            volume: volume.clone(),
            labels: labels.clone(),
            orchestrator_host_port: testkit::try_free_port()?,
            containers: BTreeMap::new(),
            host_ports: Mutex::new(HashMap::new()),
            addresses: Mutex::new(HashMap::new()),
            live,
            shut_down: false,
            fault_disk: None,
            clock: None,
            proxies: BTreeMap::new(),
            gateway: None,
            redis_host_port: testkit::try_free_port()?,
        };
        if spec.fault_disk {
            cluster.fault_disk = Some(super::disk::FaultDisk::mount(&spec.run_id)?);
        }
        if spec.clock_shift {
            cluster.clock = Some(super::clock::ClockShift::prepare(&spec.run_id)?);
        }
        docker
            .create_network(NetworkCreateRequest {
                name: network.clone(),
                driver: Some("bridge".into()),
                labels: Some(labels.clone()),
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating network {network}"))?;
        docker
            .create_volume(VolumeCreateRequest {
                name: Some(volume.clone()),
                labels: Some(labels),
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating volume {volume}"))?;
        if spec.link_proxies {
            let inspect = docker
                .inspect_network(&network, None)
                .await
                .with_context(|| format!("inspecting network {network}"))?;
            let gateway = inspect
                .ipam
                .and_then(|ipam| ipam.config)
                .and_then(|configs| configs.into_iter().find_map(|c| c.gateway))
                .and_then(|gateway| gateway.parse().ok())
                .with_context(|| format!("network {network} has no IPv4 gateway"))?;
            cluster.gateway = Some(gateway);
        }
        Ok(cluster)
    }

    /// Moves Redis's wall clock; returns the total offset in nanoseconds.
    pub fn clock_jump(&mut self, by: Duration, forward: bool) -> anyhow::Result<i64> {
        self.clock
            .as_mut()
            .context("redis runs without a shiftable clock (the cluster was started without `clock_shift`)")?
            .jump(by, forward)
    }

    /// Starts the proxy between a client service and Redis, when the run has proxies.
    async fn ensure_proxy(&mut self, service: Service) -> anyhow::Result<()> {
        let Some(gateway) = self.gateway else {
            return Ok(());
        };
        if service.is_redis() || self.proxies.contains_key(&service) {
            return Ok(());
        }
        let upstream = format!("127.0.0.1:{}", self.redis_host_port);
        let proxy =
            super::proxy::LinkProxy::start(&service.to_string(), gateway, &upstream).await?;
        self.proxies.insert(service, proxy);
        Ok(())
    }

    /// Ends the delay on a service's proxy (see [`super::proxy::LinkProxy::heal`]).
    pub async fn heal_proxy(&mut self, service: Service) -> anyhow::Result<()> {
        match self.proxies.get_mut(&service) {
            Some(proxy) => proxy.heal().await,
            None => Ok(()),
        }
    }

    /// The proxy between a service and Redis, with the address containers reach it at.
    pub fn proxy(
        &self,
        service: Service,
    ) -> Option<(&super::proxy::LinkProxy, std::net::Ipv4Addr)> {
        Some((self.proxies.get(&service)?, self.gateway?))
    }

    /// The switches of Redis's fault filesystem, when the run has one.
    pub fn fault_disk(&self) -> Option<faultfs::Control> {
        self.fault_disk.as_ref().map(|d| d.control())
    }

    /// Name of the run's network.
    pub fn network(&self) -> &str {
        &self.network
    }

    fn container_name(&self, service: Service) -> String {
        let suffix = match service {
            Service::Redis => "redis".to_string(),
            Service::Orchestrator => "orchestrator".to_string(),
            Service::Worker(n) => format!("worker-{n}"),
            Service::RedisNode(shard, member) => format!("redis-{shard}-{member}"),
        };
        format!("agent-harness-{}-{suffix}", self.spec.run_id)
    }

    fn main_port(service: Service) -> u16 {
        match service {
            Service::Redis | Service::RedisNode(..) => REDIS_PORT,
            Service::Orchestrator => ORCHESTRATOR_PORT,
            Service::Worker(_) => METRICS_PORT,
        }
    }

    fn host_port(&self, service: Service) -> Option<u16> {
        self.host_ports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&service)
            .copied()
    }

    /// Orchestrator base URL on its fixed host port.
    pub fn orchestrator_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.orchestrator_host_port)
    }

    /// Redis URL through its current host port.
    pub fn redis_url(&self) -> String {
        self.node_url(Service::Redis)
    }

    /// URL of a Redis server or cluster node through its current host port.
    pub fn node_url(&self, service: Service) -> String {
        self.spec
            .redis_url_for("127.0.0.1", self.host_port(service).unwrap_or(0))
    }

    /// `REDIS_CLUSTER_URLS` of the services: every node by its container name on the run's
    /// network.
    fn cluster_urls(&self) -> String {
        self.spec
            .redis_services()
            .into_iter()
            .map(|node| {
                self.spec
                    .redis_url_for(&self.container_name(node), REDIS_PORT)
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Metrics base URL of a worker, if it has a published port.
    pub fn worker_health_url(&self, n: u32) -> Option<String> {
        self.host_port(Service::Worker(n))
            .map(|port| format!("http://127.0.0.1:{port}"))
    }

    /// Re-reads the host port the engine published the service's main port on (and remembers
    /// its address on the run's network).
    pub async fn refresh_address(&self, service: Service) -> anyhow::Result<()> {
        let name = self.container_name(service);
        let inspect = self
            .docker
            .inspect_container(&name, None)
            .await
            .with_context(|| format!("inspecting {name}"))?;
        self.note_address(service, &inspect);
        let key = format!("{}/tcp", Self::main_port(service));
        let port = inspect
            .network_settings
            .and_then(|n| n.ports)
            .and_then(|ports| ports.get(&key).cloned().flatten())
            .and_then(|bindings| bindings.into_iter().find_map(|b| b.host_port))
            .and_then(|p| p.parse::<u16>().ok());
        let mut ports = self.host_ports.lock().unwrap_or_else(|e| e.into_inner());
        match port {
            Some(port) => {
                ports.insert(service, port);
            }
            None => {
                ports.remove(&service);
            }
        }
        Ok(())
    }

    /// Starts a service: creates its container the first time, starts the existing one after.
    pub async fn start(&mut self, service: Service) -> anyhow::Result<()> {
        let name = self.container_name(service);
        if self.containers.contains_key(&service) {
            self.docker
                .start_container(&name, None::<StartContainerOptions>)
                .await
                .with_context(|| format!("starting container {name}"))?;
        } else {
            self.ensure_proxy(service).await?;
            let container = self.create_container(service).await?;
            self.containers.insert(service, container);
            if service == Service::Redis {
                self.alias_redis().await?;
            }
        }
        self.refresh_address(service).await
    }

    /// Starts (creating where needed) several worker replicas concurrently.
    pub async fn start_workers(&mut self, slots: &[u32]) -> anyhow::Result<()> {
        let (existing, new): (Vec<u32>, Vec<u32>) = slots
            .iter()
            .partition(|slot| self.containers.contains_key(&Service::Worker(**slot)));
        for slot in existing {
            self.start(Service::Worker(slot)).await?;
        }
        for slot in &new {
            self.ensure_proxy(Service::Worker(*slot)).await?;
        }
        let created = futures::future::join_all(
            new.iter()
                .map(|slot| self.create_container(Service::Worker(*slot))),
        )
        .await;
        let mut first_error = None;
        for (slot, result) in new.iter().zip(created) {
            match result {
                Ok(container) => {
                    self.containers.insert(Service::Worker(*slot), container);
                    self.refresh_address(Service::Worker(*slot)).await?;
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn create_container(
        &self,
        service: Service,
    ) -> anyhow::Result<ContainerAsync<GenericImage>> {
        let name = self.container_name(service);
        let redis_url = match (self.gateway, self.proxies.get(&service)) {
            (Some(gateway), Some(proxy)) => {
                self.spec.redis_url_for(&gateway.to_string(), proxy.port())
            }
            _ => self.spec.redis_url_for(REDIS_ALIAS, REDIS_PORT),
        };
        let port = Self::main_port(service);
        let cluster = self.spec.redis.is_cluster();
        let request = match service {
            Service::RedisNode(..) => {
                // No volume: the node keeps its AOF and nodes.conf in the container's own layer,
                // which a kill and a start keep. Replicas authenticate to their primary with the
                // run's password.
                let password = self.spec.redis_password.clone();
                let cmd = self.redis_command(
                    ["--masterauth".to_string(), password]
                        .into_iter()
                        .chain(super::redis_cluster::NODE_ARGS.map(String::from)),
                );
                GenericImage::new(REDIS_IMAGE.0, REDIS_IMAGE.1)
                    .with_exposed_port(port.tcp())
                    .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
                    .with_cmd(cmd)
            }
            Service::Redis => {
                let cmd = self.redis_command([]);
                let mut request = GenericImage::new(REDIS_IMAGE.0, REDIS_IMAGE.1)
                    .with_exposed_port(port.tcp())
                    .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
                    .with_cmd(cmd)
                    .with_mount(match &self.fault_disk {
                        Some(disk) => {
                            Mount::bind_mount(disk.data_dir().display().to_string(), "/data")
                        }
                        None => Mount::volume_mount(self.volume.clone(), "/data"),
                    });
                if let Some(clock) = &self.clock {
                    let inside = std::path::Path::new(super::clock::CONTAINER_DIR);
                    request = request.with_mount(
                        Mount::bind_mount(
                            clock.dir().display().to_string(),
                            inside.display().to_string(),
                        )
                        .with_access_mode(testcontainers::core::AccessMode::ReadOnly),
                    );
                    for (key, value) in super::clock::ClockShift::env(inside) {
                        request = request.with_env_var(key, value);
                    }
                }
                request
            }
            Service::Orchestrator => {
                let mut request = GenericImage::new(ORCHESTRATOR_IMAGE.0, ORCHESTRATOR_IMAGE.1)
                    .with_exposed_port(port.tcp())
                    .with_wait_for(WaitFor::Nothing)
                    .with_env_var("LISTEN_ADDR", format!("0.0.0.0:{port}"));
                request = if cluster {
                    request.with_env_var("REDIS_CLUSTER_URLS", self.cluster_urls())
                } else {
                    request.with_env_var("REDIS_URL", redis_url)
                };
                for (key, value) in self.spec.orchestrator_env() {
                    request = request.with_env_var(key, value);
                }
                request
            }
            Service::Worker(_) => {
                let mut request = GenericImage::new(WORKER_IMAGE.0, WORKER_IMAGE.1)
                    .with_exposed_port(port.tcp())
                    .with_wait_for(WaitFor::Nothing)
                    .with_env_var("METRICS_ADDR", format!("0.0.0.0:{port}"));
                request = if cluster {
                    request.with_env_var("REDIS_CLUSTER_URLS", self.cluster_urls())
                } else {
                    request.with_env_var("REDIS_URL", redis_url)
                };
                for (key, value) in self.spec.worker_env() {
                    request = request.with_env_var(key, value);
                }
                request
            }
        };
        let fixed_host_port = match service {
            Service::Orchestrator => Some(self.orchestrator_host_port),
            Service::Redis if self.gateway.is_some() => Some(self.redis_host_port),
            _ => None,
        };
        request
            .with_container_name(&name)
            .with_network(&self.network)
            .with_labels(self.labels.clone())
            .with_label("agent-system.harness-service", service.to_string())
            .with_startup_timeout(READY_TIMEOUT)
            .with_host_config_modifier(move |config: &mut HostConfig| {
                publish_on_loopback(config, port, fixed_host_port)
            })
            .start()
            .await
            .with_context(|| {
                format!(
                    "starting container {name} (are the images built? run `cargo xtask images`)"
                )
            })
    }

    /// `redis-server` on the run's port and data directory with its password, persistence and
    /// memory cap, then `extra`. The password is visible to `docker inspect` (root) only, and
    /// throwaway.
    fn redis_command(&self, extra: impl IntoIterator<Item = String>) -> Vec<String> {
        let mut cmd = vec![
            "redis-server".to_string(),
            "--port".into(),
            REDIS_PORT.to_string(),
            "--dir".into(),
            "/data".into(),
            "--protected-mode".into(),
            "no".into(),
            "--requirepass".into(),
            self.spec.redis_password.clone(),
        ];
        cmd.extend(extra);
        cmd.extend(self.spec.persistence.redis_args());
        cmd.extend(super::REDIS_MEMORY_ARGS.map(String::from));
        cmd.extend(taskq::keys::REDIS_TUNING_ARGS.map(String::from));
        cmd
    }

    /// Gives Redis its `agent-redis` alias: testcontainers attached it without one, and an
    /// endpoint's aliases can only be set when connecting.
    async fn alias_redis(&self) -> anyhow::Result<()> {
        let name = self.container_name(Service::Redis);
        self.docker
            .disconnect_network(
                &self.network,
                NetworkDisconnectRequest {
                    container: name.clone(),
                    force: Some(true),
                },
            )
            .await
            .with_context(|| format!("detaching {name} to alias it"))?;
        self.connect(Service::Redis).await
    }

    /// SIGKILL, then wait until the container has exited.
    pub async fn kill(&mut self, service: Service) -> anyhow::Result<()> {
        let name = self.container_name(service);
        self.docker
            .kill_container(
                &name,
                Some(
                    KillContainerOptionsBuilder::default()
                        .signal("SIGKILL")
                        .build(),
                ),
            )
            .await
            .with_context(|| format!("killing {name}"))?;
        self.wait_exited(&name).await
    }

    /// `docker stop` with a grace period.
    pub async fn stop(&mut self, service: Service, grace: Duration) -> anyhow::Result<()> {
        self.stop_shared(service, grace).await
    }

    /// Stops several services at once (scale-down), each with the grace period.
    pub async fn stop_many(&mut self, services: &[Service], grace: Duration) -> anyhow::Result<()> {
        let stops = services.iter().map(|s| self.stop_shared(*s, grace));
        futures::future::try_join_all(stops).await?;
        Ok(())
    }

    async fn stop_shared(&self, service: Service, grace: Duration) -> anyhow::Result<()> {
        let name = self.container_name(service);
        self.docker
            .stop_container(
                &name,
                Some(
                    StopContainerOptionsBuilder::default()
                        .t(grace.as_secs() as i32)
                        .build(),
                ),
            )
            .await
            .with_context(|| format!("stopping {name}"))?;
        self.wait_exited(&name).await
    }

    async fn wait_exited(&self, name: &str) -> anyhow::Result<()> {
        // `docker stop` returns once the container is gone; after `kill` it may take a moment.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let running = self
                .docker
                .inspect_container(name, None)
                .await
                .with_context(|| format!("inspecting {name}"))?
                .state
                .and_then(|s| s.running)
                .unwrap_or(false);
            if !running {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("{name} still runs 10 s after being stopped");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Freezes the container (cgroup freezer).
    pub async fn pause(&mut self, service: Service) -> anyhow::Result<()> {
        let name = self.container_name(service);
        self.docker
            .pause_container(&name)
            .await
            .with_context(|| format!("pausing {name}"))
    }

    /// Thaws the container.
    pub async fn unpause(&mut self, service: Service) -> anyhow::Result<()> {
        let name = self.container_name(service);
        self.docker
            .unpause_container(&name)
            .await
            .with_context(|| format!("unpausing {name}"))
    }

    /// Removes the container from the run's network: it keeps running but reaches nothing.
    pub async fn disconnect(&mut self, service: Service) -> anyhow::Result<()> {
        let name = self.container_name(service);
        self.docker
            .disconnect_network(
                &self.network,
                NetworkDisconnectRequest {
                    container: name.clone(),
                    force: Some(true),
                },
            )
            .await
            .with_context(|| format!("disconnecting {name} from {}", self.network))
    }

    /// Reconnects the container (Redis with its alias) and re-reads its published port.
    pub async fn connect(&self, service: Service) -> anyhow::Result<()> {
        let name = self.container_name(service);
        let aliases = match service {
            Service::Redis => vec![REDIS_ALIAS.to_string()],
            Service::Orchestrator => vec!["agent-orchestrator".to_string()],
            Service::Worker(n) => vec![format!("worker-{n}")],
            Service::RedisNode(shard, member) => vec![format!("redis-{shard}-{member}")],
        };
        self.docker
            .connect_network(
                &self.network,
                NetworkConnectRequest {
                    container: name.clone(),
                    endpoint_config: Some(EndpointSettings {
                        aliases: Some(aliases),
                        ..Default::default()
                    }),
                },
            )
            .await
            .with_context(|| format!("connecting {name} to {}", self.network))?;
        self.refresh_address(service).await
    }

    /// The process id of the container's init (its network namespace) and its address on the
    /// run's network, for link faults.
    pub async fn netns(&self, service: Service) -> anyhow::Result<(u32, std::net::Ipv4Addr)> {
        let (pid, ip) = self.inspect_network(service).await?;
        let pid = pid.with_context(|| format!("{service} is not running"))?;
        let ip = ip.with_context(|| format!("{service} has no address on {}", self.network))?;
        Ok((pid, ip))
    }

    /// A service's address on the run's network: the current one, or while it is stopped the
    /// last one seen (a link fault on a peer that is down still names it).
    pub async fn address(&self, service: Service) -> anyhow::Result<std::net::Ipv4Addr> {
        let (_, ip) = self.inspect_network(service).await?;
        let known = self
            .addresses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&service)
            .copied();
        ip.or(known).with_context(|| {
            format!(
                "{service} has no address on {} and was never seen with one",
                self.network
            )
        })
    }

    async fn inspect_network(
        &self,
        service: Service,
    ) -> anyhow::Result<(Option<u32>, Option<std::net::Ipv4Addr>)> {
        let name = self.container_name(service);
        let inspect = self
            .docker
            .inspect_container(&name, None)
            .await
            .with_context(|| format!("inspecting {name}"))?;
        let pid = inspect
            .state
            .as_ref()
            .and_then(|s| s.pid)
            .filter(|pid| *pid > 0)
            .map(|pid| pid as u32);
        Ok((pid, self.note_address(service, &inspect)))
    }

    /// The address of `service`'s container on the run's network, from its inspection; also
    /// remembered as its last known address (a peer to name in a link fault while it is down).
    fn note_address(
        &self,
        service: Service,
        inspect: &bollard::models::ContainerInspectResponse,
    ) -> Option<std::net::Ipv4Addr> {
        let ip = inspect
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.as_ref())
            .and_then(|networks| networks.get(&self.network))
            .and_then(|endpoint| endpoint.ip_address.as_deref())
            .and_then(|ip| ip.parse::<std::net::Ipv4Addr>().ok())?;
        self.addresses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(service, ip);
        Some(ip)
    }

    /// Of `services` (those the harness believes running), the ones whose container is not
    /// running, with its exit code. A container that cannot be inspected counts as gone.
    pub async fn exited(&self, services: &[Service]) -> Vec<(Service, Option<i64>)> {
        let mut gone = Vec::new();
        for service in services {
            let name = self.container_name(*service);
            let state = match self.docker.inspect_container(&name, None).await {
                Ok(details) => details.state,
                Err(_) => None,
            };
            let running = state.as_ref().and_then(|s| s.running).unwrap_or(false);
            if !running {
                gone.push((*service, state.and_then(|s| s.exit_code)));
            }
        }
        gone
    }

    /// Full logs (stdout and stderr) of a service's container, across its restarts.
    pub async fn logs(&self, service: Service) -> anyhow::Result<String> {
        let name = self.container_name(service);
        let mut stream = self.docker.logs(
            &name,
            Some(
                LogsOptionsBuilder::default()
                    .stdout(true)
                    .stderr(true)
                    .follow(false)
                    .build(),
            ),
        );
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(
                &chunk
                    .with_context(|| format!("reading the logs of {name}"))?
                    .into_bytes(),
            );
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// `task_executed` lines of every worker container ever started in this run.
    pub async fn executions(&self) -> anyhow::Result<Vec<Execution>> {
        let workers: Vec<Service> = self
            .containers
            .keys()
            .copied()
            .filter(|s| matches!(s, Service::Worker(_)))
            .collect();
        let logs = futures::future::try_join_all(workers.iter().map(|s| self.logs(*s))).await?;
        Ok(workers
            .iter()
            .zip(logs)
            .flat_map(|(service, text)| parse_executions(&text, &service.to_string()))
            .collect())
    }

    /// Removes the containers, the network and the volume, then checks by label that nothing of
    /// the run is left.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.shut_down = true;
        let containers = std::mem::take(&mut self.containers);
        let removals = containers.into_values().map(|c| c.rm());
        for result in futures::future::join_all(removals).await {
            if let Err(e) = result {
                tracing::warn!("removing a container: {e}");
            }
        }
        cleanup::sweep_run(&self.docker, &self.spec.run_id)
            .await
            .context("removing the run's network and volume")?;
        let left = cleanup::list_labelled(
            &self.docker,
            &format!("{}={}", cleanup::LABEL_RUN, self.spec.run_id),
        )
        .await?;
        cleanup::unregister(&self.live);
        if !left.is_empty() {
            bail!("docker resources left after shutdown: {left:?}");
        }
        Ok(())
    }
}

impl Drop for DockerCluster {
    fn drop(&mut self) {
        if self.shut_down {
            return;
        }
        // testcontainers' own drop needs a Tokio runtime of a suitable flavour; the label sweep
        // works from anywhere, so the handles are forgotten and the sweep removes everything.
        for (_, container) in std::mem::take(&mut self.containers) {
            std::mem::forget(container);
        }
        cleanup::cleanup_blocking(&self.live);
    }
}

/// Publishes `port` on 127.0.0.1 only: on `fixed` when given, else on a random host port.
fn publish_on_loopback(config: &mut HostConfig, port: u16, fixed: Option<u16>) {
    config.publish_all_ports = Some(false);
    config.port_bindings = Some(HashMap::from([(
        format!("{port}/tcp"),
        Some(vec![PortBinding {
            host_ip: Some("127.0.0.1".into()),
            host_port: Some(fixed.map(|p| p.to_string()).unwrap_or_default()),
        }]),
    )]));
}
