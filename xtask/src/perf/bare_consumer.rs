//! The bench-only bare batched consumer: the ceiling a drain is read against. It drains the same
//! tasks (the project's streams, consumer group and task hashes) as a worker, with the least a
//! consumer can do and still track state: `XREADGROUP COUNT 200` over the ten priority streams,
//! one pipelined `HSET status running` per task, then one pipelined `HSET status succeeded` and
//! `XACK` per task. No script, no ownership check, no log line, no metrics, no lease: what Redis
//! and one connection allow on this machine.

use redis::aio::MultiplexedConnection;
use redis::streams::{StreamReadOptions, StreamReadReply};
use taskq::keys::CONSUMER_GROUP;
use taskq::{Keys, TaskId};

/// Entries read per stream per round.
pub const COUNT: usize = 200;

/// Drains the queue under `prefix` as consumer `consumer` until a read finds nothing; returns
/// how many tasks it finished.
pub async fn drain(redis_url: &str, prefix: &str, consumer: &str) -> anyhow::Result<u64> {
    let client = redis::Client::open(redis_url)?;
    let mut conn: MultiplexedConnection = client.get_multiplexed_async_connection().await?;
    let keys = Keys::new(prefix);
    let streams = keys.streams();
    let ids = vec![">"; streams.len()];
    let options = StreamReadOptions::default()
        .group(CONSUMER_GROUP, consumer)
        .count(COUNT);
    let mut finished = 0u64;
    loop {
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg(&options)
            .arg("STREAMS")
            .arg(&streams)
            .arg(&ids)
            .query_async(&mut conn)
            .await?;
        let Some(reply) = reply.filter(|r| r.keys.iter().any(|k| !k.ids.is_empty())) else {
            return Ok(finished);
        };
        // (stream, entry id, task key) per delivered entry
        let mut batch = Vec::new();
        for stream in &reply.keys {
            for entry in &stream.ids {
                let Some(task_id) = entry
                    .get::<String>("t")
                    .and_then(|t| t.parse::<TaskId>().ok())
                else {
                    continue;
                };
                batch.push((stream.key.as_str(), entry.id.as_str(), keys.task(&task_id)));
            }
        }
        let mut start = redis::pipe();
        for (_, _, key) in &batch {
            start.hset(key, "status", "running").ignore();
        }
        start.query_async::<()>(&mut conn).await?;
        let mut finish = redis::pipe();
        for (stream, entry, key) in &batch {
            finish.hset(key, "status", "succeeded").ignore();
            finish.xack(*stream, CONSUMER_GROUP, &[*entry]).ignore();
        }
        finish.query_async::<()>(&mut conn).await?;
        finished += batch.len() as u64;
    }
}
