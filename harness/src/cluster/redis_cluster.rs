//! A Redis Cluster of `agent-redis` containers: forming it, reading who is whose primary, and
//! promoting a replica.
//!
//! The harness reaches every node through its own published port (`node` URLs below); the
//! nodes reach each other on the run's network (`ip`). The cluster is built with the cluster
//! commands themselves (`CLUSTER MEET`, `ADDSLOTSRANGE`, `REPLICATE`; no `redis-cli`): shard S
//! (from 1) owns the S-th of equal slot ranges in order, so partition S − 1 of the queue
//! ([`taskq::Keys::hash_tagged`]) lives on it.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context, bail};

/// Arguments every node runs with: cluster mode, a failing primary replaced fast (a node
/// unreachable for a second counts as failing; the replica of a killed primary takes over
/// within a few seconds), and a full resync started at once (Redis 7.0 waits 5 s by default for
/// more replicas to share a diskless transfer: a rejoining replica, and with `REPLICA_ACKS` every
/// write to its shard, would wait that long).
pub const NODE_ARGS: [&str; 8] = [
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "1000",
    "--repl-diskless-sync-delay",
    "0",
];

/// How long the cluster may take to form.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a replica may take to take over after `CLUSTER FAILOVER TAKEOVER`.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for one node's answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(1);

/// One node as the cluster is built: its URL from the harness and its address on the network.
pub struct Node {
    /// `redis://:password@127.0.0.1:port`.
    pub url: String,
    /// Address on the run's network.
    pub ip: Ipv4Addr,
}

/// A node's view of itself (`CLUSTER NODES`, its `myself` line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// The node's cluster id.
    pub id: String,
    /// A primary that owns slots (a primary that lost its slots in a failover is not one).
    pub primary: bool,
    /// Its configuration epoch: of two nodes claiming the same slots, the higher one wins.
    pub epoch: u64,
}

/// The slots of shard `shard` (from 1) of `shards`: equal ranges in order.
pub fn slot_range(shard: u32, shards: u32) -> (u32, u32) {
    let index = shard - 1;
    (index * 16_384 / shards, (index + 1) * 16_384 / shards - 1)
}

async fn connect(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url).context("parsing a node's url")?;
    tokio::time::timeout(REPLY_TIMEOUT, client.get_multiplexed_async_connection())
        .await
        .context("connecting to a node timed out")?
        .context("connecting to a node")
}

async fn query<T: redis::FromRedisValue>(url: &str, cmd: &redis::Cmd) -> anyhow::Result<T> {
    let mut conn = connect(url).await?;
    tokio::time::timeout(REPLY_TIMEOUT, cmd.query_async(&mut conn))
        .await
        .context("a node's answer timed out")?
        .map_err(anyhow::Error::from)
}

fn cluster(args: &[&str]) -> redis::Cmd {
    let mut cmd = redis::cmd("CLUSTER");
    for arg in args {
        cmd.arg(*arg);
    }
    cmd
}

/// Forms the cluster: `shards` lists each shard's nodes, the one to start as primary first.
/// Returns once every node sees the cluster `ok` and every replica is linked to its primary.
pub async fn form(shards: &[Vec<Node>]) -> anyhow::Result<()> {
    let all: Vec<&Node> = shards.iter().flatten().collect();
    let first = all.first().context("a cluster needs a node")?;
    for node in &all[1..] {
        let () = query(
            &first.url,
            cluster(&["MEET", &node.ip.to_string(), "6379"]).arg(16_379),
        )
        .await
        .context("CLUSTER MEET")?;
    }
    let count = shards.len() as u32;
    for (index, nodes) in shards.iter().enumerate() {
        let (from, to) = slot_range(index as u32 + 1, count);
        let () = query(
            &nodes[0].url,
            &cluster(&["ADDSLOTSRANGE", &from.to_string(), &to.to_string()]),
        )
        .await
        .context("CLUSTER ADDSLOTSRANGE")?;
    }
    for node in &all {
        wait("every node to know every other", || async {
            let nodes: String = query(&node.url, &cluster(&["NODES"])).await?;
            let known = nodes.lines().filter(|l| !l.contains("handshake")).count();
            anyhow::ensure!(known == all.len(), "knows {known} of {}", all.len());
            Ok(())
        })
        .await?;
    }
    for nodes in shards {
        let primary: String = query(&nodes[0].url, &cluster(&["MYID"])).await?;
        for replica in &nodes[1..] {
            let () = query(&replica.url, &cluster(&["REPLICATE", &primary]))
                .await
                .context("CLUSTER REPLICATE")?;
        }
    }
    for nodes in shards {
        for (member, node) in nodes.iter().enumerate() {
            wait("the cluster to be ok", || async {
                let info: String = query(&node.url, &cluster(&["INFO"])).await?;
                let replication: String =
                    query(&node.url, redis::cmd("INFO").arg("replication")).await?;
                let linked = if member == 0 {
                    replication.contains(&format!("connected_slaves:{}", nodes.len() - 1))
                } else {
                    replication.contains("master_link_status:up")
                };
                anyhow::ensure!(
                    info.contains("cluster_state:ok") && linked,
                    "not yet ok and linked"
                );
                Ok(())
            })
            .await?;
        }
    }
    Ok(())
}

async fn wait<F, Fut>(what: &str, mut attempt: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let deadline = tokio::time::Instant::now() + FORM_TIMEOUT;
    loop {
        match attempt().await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                bail!("waited {}s for {what}: {e:#}", FORM_TIMEOUT.as_secs())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// What the node at `url` says it is.
pub async fn role(url: &str) -> anyhow::Result<Role> {
    let nodes: String = query(url, &cluster(&["NODES"])).await?;
    parse_myself(&nodes).context("CLUSTER NODES has no `myself` line")
}

/// The `myself` line of a `CLUSTER NODES` answer:
/// `<id> <ip:port@bus> <flags> <primary> <ping> <pong> <epoch> <link> [<slot> ...]`.
fn parse_myself(nodes: &str) -> Option<Role> {
    let line = nodes.lines().find(|line| {
        line.split(' ')
            .nth(2)
            .is_some_and(|flags| flags.split(',').any(|f| f == "myself"))
    })?;
    let fields: Vec<&str> = line.split(' ').collect();
    let flags = fields.get(2)?;
    Some(Role {
        id: fields.first()?.to_string(),
        primary: flags.split(',').any(|f| f == "master") && fields.len() > 8,
        epoch: fields.get(6)?.parse().ok()?,
    })
}

/// `CLUSTER FAILOVER TAKEOVER` on the replica at `url`; returns once it owns its primary's
/// slots.
pub async fn take_over(url: &str) -> anyhow::Result<Duration> {
    let started = tokio::time::Instant::now();
    let () = query(url, &cluster(&["FAILOVER", "TAKEOVER"]))
        .await
        .context("CLUSTER FAILOVER TAKEOVER")?;
    loop {
        if role(url).await.is_ok_and(|r| r.primary) {
            return Ok(started.elapsed());
        }
        if started.elapsed() >= TAKEOVER_TIMEOUT {
            bail!(
                "the replica did not take over within {}s",
                TAKEOVER_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_own_equal_slot_ranges_in_order_like_the_queue_partitions_expect() {
        assert_eq!(slot_range(1, 3), (0, 5460));
        assert_eq!(slot_range(2, 3), (5461, 10_921));
        assert_eq!(slot_range(3, 3), (10_922, 16_383));
        assert_eq!(slot_range(1, 1), (0, 16_383));
        // partition S - 1 of S shards hashes into shard S's range
        for shards in 1..=5u16 {
            for index in 0..shards {
                let keys = taskq::Keys::hash_tagged(
                    "agent",
                    taskq::keys::Partition {
                        index,
                        count: shards,
                    },
                );
                let slot = u32::from(taskq::keys::cluster_slot(&keys.retry_schedule()));
                let (from, to) = slot_range(u32::from(index) + 1, u32::from(shards));
                assert!((from..=to).contains(&slot), "{index}/{shards}: {slot}");
            }
        }
    }

    #[test]
    fn myself_is_read_from_cluster_nodes() {
        let nodes = "\
07c3 172.18.0.3:6379@16379 master - 0 1700000000000 2 connected 5461-10922\n\
e7d1 172.18.0.2:6379@16379 myself,master - 0 0 1 connected 0-5460\n";
        assert_eq!(
            parse_myself(nodes),
            Some(Role {
                id: "e7d1".into(),
                primary: true,
                epoch: 1
            })
        );
        let replica = "e7d1 172.18.0.2:6379@16379 myself,slave 07c3 0 0 4 connected\n";
        assert!(!parse_myself(replica).expect("a myself line").primary);
        let demoted = "e7d1 172.18.0.2:6379@16379 myself,master - 0 0 1 connected\n";
        assert!(
            !parse_myself(demoted).expect("a myself line").primary,
            "a primary without slots is not a shard's primary"
        );
    }
}
