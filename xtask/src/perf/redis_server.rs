//! A `redis-server` for one benchmark mode, and what its `INFO` tells: CPU seconds used and
//! per-command call counts and times.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use redis::aio::MultiplexedConnection;
use serde::Serialize;
use testkit::{Log, Persistence, RedisConfig, RedisServer};

/// How Redis persists (README.md, "Durability"): AOF on, fsync per write or once a second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// `appendfsync always`: a 201 is on disk (the default in compose, Kubernetes, harness).
    Always,
    /// `appendfsync everysec`: may lose about the last second on a machine crash.
    Everysec,
}

impl Fsync {
    /// The `appendfsync` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Fsync::Always => "always",
            Fsync::Everysec => "everysec",
        }
    }

    /// The Redis persistence mode: AOF with this fsync.
    pub fn persistence(self) -> Persistence {
        match self {
            Fsync::Always => Persistence::AofAlways,
            Fsync::Everysec => Persistence::AofEverysec,
        }
    }
}

/// A running `redis-server` on a free loopback port, its data in its own directory.
#[derive(Debug)]
pub struct RedisProcess {
    server: RedisServer,
    /// The persistence it runs with.
    pub fsync: Fsync,
    /// The command line, for the report.
    pub command: String,
}

impl RedisProcess {
    /// Starts `redis-server` with `appendonly yes` and `appendfsync` as asked, data in `dir`.
    /// Returns once it answers `PING`.
    pub async fn start(fsync: Fsync, dir: &Path) -> anyhow::Result<Self> {
        let server = RedisConfig::new()
            .persistence(fsync.persistence())
            // The stream node size every deployment gives Redis.
            .extra_args(taskq::keys::REDIS_TUNING_ARGS)
            // Redis's own record of its stalls (fork, AOF write and fsync, slow commands).
            .arg("--latency-monitor-threshold")
            .arg("1")
            .log(Log::Create(
                dir.join(format!("redis-{}.log", fsync.as_str())),
            ))
            .start_in(&dir.join(format!("redis-{}", fsync.as_str())))?;
        Ok(Self {
            command: server.command_line(),
            server,
            fsync,
        })
    }

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// A new multiplexed connection.
    pub async fn connect(&self) -> anyhow::Result<MultiplexedConnection> {
        let client = redis::Client::open(self.url())?;
        Ok(client.get_multiplexed_async_connection().await?)
    }

    /// Drops every key (the script cache stays), rewrites the AOF so the next automatic rewrite
    /// is as far away for every phase, and resets the command statistics.
    pub async fn reset(&self) -> anyhow::Result<()> {
        let mut conn = self.connect().await?;
        self.wait_no_rewrite(&mut conn).await?;
        redis::cmd("FLUSHALL")
            .query_async::<()>(&mut conn)
            .await
            .context("FLUSHALL")?;
        self.rewrite_aof(&mut conn).await?;
        redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Rewrites the AOF and waits for the rewrite to finish. An automatic rewrite may be under
    /// way (one can start between [`RedisProcess::reset`]'s wait and its call: the flush leaves
    /// the AOF as long as before, so its growth rule can fire): it is waited out and the call
    /// made again, so the rewrite that finishes is one that began after the call.
    pub(super) async fn rewrite_aof(&self, conn: &mut MultiplexedConnection) -> anyhow::Result<()> {
        loop {
            match redis::cmd("BGREWRITEAOF").query_async::<()>(conn).await {
                Ok(()) => break,
                Err(err) if err.to_string().contains("already in progress") => {
                    self.wait_no_rewrite(conn).await?;
                }
                Err(err) => return Err(err).context("BGREWRITEAOF"),
            }
        }
        self.wait_no_rewrite(conn).await
    }

    async fn wait_no_rewrite(&self, conn: &mut MultiplexedConnection) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let info: String = redis::cmd("INFO")
                .arg("persistence")
                .query_async(conn)
                .await?;
            let busy = info
                .lines()
                .any(|l| l == "aof_rewrite_in_progress:1" || l == "aof_rewrite_scheduled:1");
            if !busy {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "an AOF rewrite took over 60 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resets the command statistics only.
    pub async fn reset_stats(&self) -> anyhow::Result<()> {
        let mut conn = self.connect().await?;
        redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// CPU seconds (user + system) used by Redis's main process and by its finished children
    /// (AOF rewrites), from `INFO cpu`.
    pub async fn cpu_seconds(&self) -> anyhow::Result<(f64, f64)> {
        let info = self.info("cpu").await?;
        let field = |name: &str| -> f64 {
            xtask::tools::info_field(&info, name)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0)
        };
        Ok((
            field("used_cpu_sys") + field("used_cpu_user"),
            field("used_cpu_sys_children") + field("used_cpu_user_children"),
        ))
    }

    /// Calls and microseconds per command since the last reset, from `INFO commandstats`.
    pub async fn command_stats(&self) -> anyhow::Result<BTreeMap<String, CommandStat>> {
        let info = self.info("commandstats").await?;
        let mut stats = BTreeMap::new();
        for line in info.lines() {
            let Some((name, rest)) = line
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let value = |key: &str| -> f64 {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0.0)
            };
            stats.insert(
                name.to_owned(),
                CommandStat {
                    calls: value("calls") as u64,
                    usec: value("usec") as u64,
                },
            );
        }
        Ok(stats)
    }

    async fn info(&self, section: &str) -> anyhow::Result<String> {
        let mut conn = self.connect().await?;
        Ok(redis::cmd("INFO")
            .arg(section)
            .query_async(&mut conn)
            .await?)
    }

    /// Forgets the stalls recorded so far (`LATENCY RESET`).
    pub async fn reset_latency(&self) -> anyhow::Result<()> {
        let mut conn = self.connect().await?;
        redis::cmd("LATENCY")
            .arg("RESET")
            .query_async::<i64>(&mut conn)
            .await?;
        Ok(())
    }

    /// Stalls recorded since the last reset (`LATENCY LATEST`): event, count of the latest
    /// second's occurrences aside, and the worst duration in milliseconds.
    pub async fn latency_events(&self) -> anyhow::Result<Vec<LatencyEvent>> {
        let mut conn = self.connect().await?;
        let rows: Vec<(String, i64, i64, i64)> = redis::cmd("LATENCY")
            .arg("LATEST")
            .query_async(&mut conn)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(event, _, latest_ms, max_ms)| LatencyEvent {
                event,
                latest_ms,
                max_ms,
            })
            .collect())
    }

    /// Loads a script and returns its SHA1.
    pub async fn load_script(&self, source: &str) -> anyhow::Result<String> {
        let mut conn = self.connect().await?;
        Ok(redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(source)
            .query_async(&mut conn)
            .await?)
    }

    /// Stops the server.
    pub fn stop(&mut self) {
        let _ = self.server.stop(Duration::from_secs(10));
    }
}

/// One command's counters from `INFO commandstats`.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize)]
pub struct CommandStat {
    /// Calls.
    pub calls: u64,
    /// Microseconds spent in them (inside Redis, excluding I/O).
    pub usec: u64,
}

/// One kind of stall Redis's latency monitor recorded (threshold 1 ms).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct LatencyEvent {
    /// What stalled: `aof-write`, `aof-fsync-always`, `fork`, `command`, ...
    pub event: String,
    /// The latest occurrence, milliseconds.
    pub latest_ms: i64,
    /// The worst occurrence, milliseconds.
    pub max_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_rewrite_asked_for_while_another_runs_waits_for_it_and_runs_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let redis = RedisProcess::start(Fsync::Everysec, dir.path())
            .await
            .unwrap();
        let mut conn = redis.connect().await.unwrap();
        for i in 0..5 {
            redis::cmd("SET")
                .arg(format!("k{i}"))
                .arg(i)
                .query_async::<()>(&mut conn)
                .await
                .unwrap();
        }
        // The rewrite child sleeps 0.1 s per key: the first rewrite runs for about 0.5 s.
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("rdb-key-save-delay")
            .arg("100000")
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
        redis::cmd("BGREWRITEAOF")
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
        let forks_before = forks(&mut conn).await;
        let during = info(&mut conn, "persistence").await;
        assert!(during.contains("aof_rewrite_in_progress:1"), "{during}");
        redis.rewrite_aof(&mut conn).await.unwrap();
        let after = info(&mut conn, "persistence").await;
        assert!(after.contains("aof_rewrite_in_progress:0"), "{after}");
        assert!(after.contains("aof_last_bgrewrite_status:ok"), "{after}");
        // its own, after the one that was running
        assert_eq!(forks(&mut conn).await, forks_before + 1);
    }

    async fn info(conn: &mut MultiplexedConnection, section: &str) -> String {
        redis::cmd("INFO")
            .arg(section)
            .query_async(conn)
            .await
            .unwrap()
    }

    /// Children forked so far (`INFO stats`): here, AOF rewrites started.
    async fn forks(conn: &mut MultiplexedConnection) -> u64 {
        info(conn, "stats")
            .await
            .lines()
            .find_map(|l| l.strip_prefix("total_forks:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("total_forks in INFO stats")
    }
}
