//! A Redis Cluster of local `redis-server` processes ([`RedisCluster`]): `shards` primaries
//! with `replicas` replicas each, built with the cluster commands themselves (`CLUSTER MEET`,
//! `ADDSLOTSRANGE`, `REPLICATE`; no `redis-cli`), each node on free loopback ports.
//!
//! The nodes fail over fast: a primary unreachable for [`NODE_TIMEOUT`] is replaced by its
//! replica within a few seconds. Each node is a [`RedisServer`], so it can be SIGKILLed and
//! started again like a single server; all are killed when the cluster is dropped.

use std::time::Duration;

use anyhow::Context;

use crate::redis::{Persistence, RedisConfig, RedisServer};
use crate::wait::Wait;

/// `cluster-node-timeout`: how long a node may be unreachable before it counts as failing.
pub const NODE_TIMEOUT: Duration = Duration::from_millis(1000);

/// How long the cluster may take to form.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// A running Redis Cluster on loopback.
#[derive(Debug)]
pub struct RedisCluster {
    /// Primaries first (shard order), then the replicas of shard 0, of shard 1, ...
    nodes: Vec<RedisServer>,
    shards: usize,
    replicas: usize,
}

impl RedisCluster {
    /// A cluster of `shards` primaries (equal slot ranges, in order) with `replicas` replicas
    /// each, AOF `always` on every node.
    ///
    /// # Panics
    /// When a node cannot start or the cluster does not form within 30 s.
    pub fn start(shards: usize, replicas: usize) -> Self {
        Self::try_start(shards, replicas, Persistence::AofAlways, &[])
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// [`RedisCluster::start`] with a persistence mode and more `redis-server` arguments for
    /// every node, and the error instead of a panic.
    pub fn try_start(
        shards: usize,
        replicas: usize,
        persistence: Persistence,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(shards >= 1, "a cluster needs a primary");
        let total = shards * (1 + replicas);
        let mut nodes = Vec::with_capacity(total);
        let mut buses = Vec::with_capacity(total);
        for _ in 0..total {
            let bus = crate::port::try_free_port()?;
            let timeout = NODE_TIMEOUT.as_millis().to_string();
            let node = RedisConfig::new()
                .persistence(persistence)
                .extra_args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    timeout.as_str(),
                    "--cluster-port",
                    bus.to_string().as_str(),
                    "--enable-debug-command",
                    "local",
                ])
                .extra_args(extra_args)
                .start()?;
            nodes.push(node);
            buses.push(bus);
        }
        let cluster = Self {
            nodes,
            shards,
            replicas,
        };
        cluster.form(&buses)?;
        Ok(cluster)
    }

    fn form(&self, buses: &[u16]) -> anyhow::Result<()> {
        let mut first = self.connection(0)?;
        for (node, bus) in self.nodes.iter().zip(buses).skip(1) {
            let _: () = redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(node.port())
                .arg(*bus)
                .query(&mut first)
                .context("CLUSTER MEET")?;
        }
        for shard in 0..self.shards {
            let (from, to) = slot_range(shard, self.shards);
            let _: () = redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(from)
                .arg(to)
                .query(&mut self.connection(shard)?)
                .context("CLUSTER ADDSLOTSRANGE")?;
        }
        let total = self.nodes.len();
        for index in 0..total {
            let mut conn = self.connection(index)?;
            Wait::new(
                format!("node {index} to know all {total} nodes"),
                FORM_TIMEOUT,
            )
            .every(Duration::from_millis(50))
            .try_until(|| {
                let nodes: String = redis::cmd("CLUSTER").arg("NODES").query(&mut conn)?;
                let known = nodes
                    .lines()
                    .filter(|line| !line.contains("handshake"))
                    .count();
                if known == total {
                    Ok(())
                } else {
                    Err(anyhow::anyhow!("knows {known}"))
                }
            })?;
        }
        for shard in 0..self.shards {
            let primary_id: String = redis::cmd("CLUSTER")
                .arg("MYID")
                .query(&mut self.connection(shard)?)?;
            for replica in 0..self.replicas {
                let index = self.replica_index(shard, replica);
                let _: () = redis::cmd("CLUSTER")
                    .arg("REPLICATE")
                    .arg(&primary_id)
                    .query(&mut self.connection(index)?)
                    .with_context(|| format!("CLUSTER REPLICATE on node {index}"))?;
            }
        }
        for index in 0..total {
            let mut conn = self.connection(index)?;
            Wait::new(format!("node {index} to see the cluster ok"), FORM_TIMEOUT)
                .every(Duration::from_millis(50))
                .try_until(|| {
                    let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut conn)?;
                    let replication: String =
                        redis::cmd("INFO").arg("replication").query(&mut conn)?;
                    let linked =
                        index < self.shards || replication.contains("master_link_status:up");
                    let fed = index >= self.shards
                        || replication.contains(&format!("connected_slaves:{}", self.replicas));
                    if info.contains("cluster_state:ok") && linked && fed {
                        Ok(())
                    } else {
                        Err(anyhow::anyhow!("not yet: {info}"))
                    }
                })?;
        }
        Ok(())
    }

    fn connection(&self, index: usize) -> anyhow::Result<redis::Connection> {
        redis::Client::open(self.nodes[index].url())?
            .get_connection_with_timeout(Duration::from_secs(2))
            .with_context(|| format!("connecting to cluster node {index}"))
    }

    fn replica_index(&self, shard: usize, replica: usize) -> usize {
        self.shards + shard * self.replicas + replica
    }

    /// The seed URLs of every node, comma-separated (`REDIS_CLUSTER_URLS`).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// How many shards.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// The node that was the primary of `shard` (0-based) when the cluster formed.
    pub fn primary(&mut self, shard: usize) -> &mut RedisServer {
        &mut self.nodes[shard]
    }

    /// Replica `replica` of `shard` as the cluster formed.
    pub fn replica(&mut self, shard: usize, replica: usize) -> &mut RedisServer {
        let index = self.replica_index(shard, replica);
        &mut self.nodes[index]
    }

    /// Every node: primaries first, then the replicas shard by shard.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }
}

/// The slots of shard `shard` of `shards`: equal ranges in order, as `redis-cli --cluster
/// create` assigns them.
pub fn slot_range(shard: usize, shards: usize) -> (usize, usize) {
    (shard * 16_384 / shards, (shard + 1) * 16_384 / shards - 1)
}
