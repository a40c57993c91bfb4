//! `just k8s-secrets` and `just k8s-apply`: kubectl, driven thinly. What goes into the Secret is
//! rendered by [`secrets::k8s_secret_files`] (tested without a cluster); kubectl reads the values
//! from files (`--from-file`), so none is on a command line.

use std::io;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, ensure};

use crate::compose::{CLUSTER_MEMBERS, CLUSTER_SHARDS, Topology};
use crate::secrets::{self, K8S_NAMESPACE, K8S_SECRET, RedisTopology, SecretsDir};
use crate::tools;

fn kubectl(args: &[&std::ffi::OsStr], stdout: Stdio) -> anyhow::Result<()> {
    let status = Command::new("kubectl")
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .status()
        .context("running kubectl")?;
    ensure!(status.success(), "kubectl failed ({status})");
    Ok(())
}

/// The Redis Cluster's StatefulSet and headless Service (k8s/redis-cluster/).
pub const CLUSTER_STATEFULSET: &str = "agent-redis-cluster";

/// The Redis Cluster of k8s/redis-cluster/ (the compose cluster's shape): every pod of its
/// StatefulSet by its stable name.
pub fn cluster_topology() -> RedisTopology {
    RedisTopology::Cluster {
        nodes: (0..CLUSTER_SHARDS * CLUSTER_MEMBERS)
            .map(|pod| format!("{CLUSTER_STATEFULSET}-{pod}.{CLUSTER_STATEFULSET}:6379"))
            .collect(),
        shards: CLUSTER_SHARDS,
    }
}

/// Which Redis `REDIS_SHARDS` asks for (as in compose: [`Topology::parse`]): unset or 1, the
/// single `agent-redis` (k8s/20-redis.yaml); [`CLUSTER_SHARDS`], the Redis Cluster of
/// k8s/redis-cluster/, its pods named through the headless Service.
pub fn topology() -> anyhow::Result<RedisTopology> {
    let setting = std::env::var("REDIS_SHARDS").unwrap_or_default();
    Ok(match Topology::parse(&setting)? {
        Some(Topology::Cluster) => cluster_topology(),
        Some(Topology::Single) | None => RedisTopology::Single,
    })
}

/// Creates the Secret `agent-system/agent-redis` (random passwords, `REDIS_URL`, the ACL file;
/// with `REDIS_SHARDS=3` also `REDIS_CLUSTER_URLS`, `QUEUE_PARTITIONS`, `REPLICA_ACKS` and the
/// nodes' `redis-cluster.conf`) unless it exists; an existing one is left as it is.
pub fn create_secret(workspace_root: &Path) -> anyhow::Result<()> {
    let topology = topology()?;
    if tools::succeeds(
        "kubectl",
        &["-n", K8S_NAMESPACE, "get", "secret", K8S_SECRET],
    ) {
        println!("k8s: Secret {K8S_SECRET} exists; left as it is (rotation: docs/deploy.md)");
        return Ok(());
    }
    let tmp = tempfile::tempdir().context("creating a temporary directory")?;
    let files = secrets::k8s_secret_files(
        &SecretsDir::new(tmp.path()),
        &workspace_root.join(secrets::ACL_TEMPLATE),
        &topology,
        &mut io::stdout().lock(),
    )?;
    let args = secrets::k8s_create_secret_args(&files);
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    kubectl(&args, Stdio::null())?;
    let label = [
        "-n",
        K8S_NAMESPACE,
        "label",
        "secret",
        K8S_SECRET,
        "app.kubernetes.io/part-of=agent-system",
    ]
    .map(std::ffi::OsStr::new);
    kubectl(&label, Stdio::null())?;
    println!(
        "k8s: created Secret {K8S_SECRET} (Redis admin and agent passwords, REDIS_URL, ACL file)"
    );
    Ok(())
}

/// The namespace, then the Secret ([`create_secret`]), then every manifest of `k8s/`; with
/// `REDIS_SHARDS=3` the Redis Cluster of `k8s/redis-cluster/` instead of `k8s/20-redis.yaml`.
pub fn apply(workspace_root: &Path) -> anyhow::Result<()> {
    let files: &[&str] = match topology()? {
        RedisTopology::Single => &["k8s/00-namespace.yaml", "k8s/"],
        RedisTopology::Cluster { .. } => &[
            "k8s/00-namespace.yaml",
            "k8s/10-config.yaml",
            "k8s/redis-cluster/",
            "k8s/30-orchestrator.yaml",
            "k8s/40-worker.yaml",
        ],
    };
    for (index, file) in files.iter().enumerate() {
        eprintln!("kubectl apply -f {file}");
        let path = workspace_root.join(file);
        kubectl(
            &["apply".as_ref(), "-f".as_ref(), path.as_os_str()],
            Stdio::inherit(),
        )?;
        if index == 0 {
            // The namespace exists now; the pods need the Secret.
            create_secret(workspace_root)?;
        }
    }
    Ok(())
}
