//! criterion benchmarks of the queue's hot paths: the task record's encoding and decoding, and
//! the protocol's round trips (enqueue, claim + finish) against a real local `redis-server`.
//!
//! Redis runs with `appendonly yes`, `appendfsync everysec` (no fsync per write), so the round
//! trips measure the protocol and Redis's script execution rather than the disk; `just bench`
//! measures `always` too. Run with `cargo bench -p taskq`; `redis-server` must be on the `PATH`.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use redis::aio::MultiplexedConnection;
use taskq::queue::{Delivery, Queue};
use taskq::{
    Description, EnqueueOutcome, ExecutionOutcome, Finish, Keys, Priority, QueueConfig, TaskRecord,
};

use testkit::{Persistence, RedisServer};

/// A realistic description: one line, a few dozen characters.
const DESCRIPTION: &str = "Resize thumbnail images for customer 4711 (order 2024-118)";

/// Claim batch sizes measured by `claim_finish`: one task per round trip, and a worker's batch.
const BATCHES: [usize; 2] = [1, 64];

fn stored_fields() -> HashMap<String, String> {
    [
        ("v", "1"),
        ("id", "0190c5d2-6a8e-7cc3-9a43-0d5f1e1e2a01"),
        ("description", DESCRIPTION),
        ("priority", "3"),
        ("status", "succeeded"),
        ("attempts", "1"),
        ("max_attempts", "5"),
        ("created_at", "1700000000000"),
        ("started_at", "1700000000100"),
        ("finished_at", "1700000000250"),
        ("worker", "vm-1234-abcd"),
        ("result", r#"{"ok":true,"work_ms":0}"#),
        ("stream_id", "1700000000000-0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn record_codec(c: &mut Criterion) {
    let fields = stored_fields();
    let record = TaskRecord::from_fields(&fields).expect("valid record");
    let json = serde_json::to_vec(&record).expect("serialisable");
    let mut group = c.benchmark_group("record");
    group.throughput(Throughput::Elements(1));
    group.bench_function("from_fields", |b| {
        b.iter(|| TaskRecord::from_fields(black_box(&fields)))
    });
    group.bench_function("to_json", |b| {
        b.iter(|| serde_json::to_vec(black_box(&record)))
    });
    group.bench_function("from_json", |b| {
        b.iter(|| serde_json::from_slice::<TaskRecord>(black_box(&json)))
    });
    group.finish();
}

struct Fixture {
    // Dropped last: kills redis-server and removes its data directory.
    _redis: RedisServer,
    runtime: tokio::runtime::Runtime,
    conn: MultiplexedConnection,
    queue: Queue,
}

impl Fixture {
    fn start(prefix: &str) -> Self {
        let redis = RedisServer::start_with(Persistence::AofEverysec);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let queue = Queue::new(QueueConfig {
            keys: Keys::new(prefix),
            ..QueueConfig::default()
        });
        let conn = runtime.block_on(async {
            let client = redis::Client::open(redis.url()).expect("redis url");
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .expect("connecting to redis-server");
            queue
                .ensure_groups(&mut conn)
                .await
                .expect("consumer groups");
            conn
        });
        Self {
            _redis: redis,
            runtime,
            conn,
            queue,
        }
    }

    /// Enqueues `n` tasks, 256 in flight at a time over the multiplexed connection.
    async fn fill(&self, n: usize) {
        use futures::StreamExt;
        let description = Description::parse(DESCRIPTION.into()).expect("valid");
        futures::stream::iter(0..n)
            .map(|_| {
                let mut conn = self.conn.clone();
                let queue = &self.queue;
                let description = &description;
                async move {
                    queue
                        .enqueue(&mut conn, description, Priority::DEFAULT, None)
                        .await
                        .expect("enqueue")
                }
            })
            .buffer_unordered(256)
            .for_each(|_| async {})
            .await;
    }
}

fn enqueue(c: &mut Criterion) {
    let fixture = Fixture::start("bench-enqueue");
    let description = Description::parse(DESCRIPTION.into()).expect("valid");
    let mut group = c.benchmark_group("enqueue");
    group.throughput(Throughput::Elements(1));
    // One request at a time: the latency of one atomic round trip (hash + stream entry).
    group.bench_function("round_trip", |b| {
        b.to_async(&fixture.runtime).iter(|| {
            let mut conn = fixture.conn.clone();
            let queue = &fixture.queue;
            let description = &description;
            async move {
                let outcome = queue
                    .enqueue(&mut conn, description, Priority::DEFAULT, None)
                    .await
                    .expect("enqueue");
                assert!(matches!(outcome, EnqueueOutcome::Created(_)));
            }
        })
    });
    // 64 requests in flight over one multiplexed connection, as the orchestrator does under
    // load: the redis client pipelines them, so this reads as throughput per task.
    const IN_FLIGHT: u64 = 64;
    group.throughput(Throughput::Elements(IN_FLIGHT));
    group.bench_function("multiplexed_64_in_flight", |b| {
        b.to_async(&fixture.runtime).iter(|| {
            let queue = &fixture.queue;
            let description = &description;
            let calls = (0..IN_FLIGHT).map(|_| {
                let mut conn = fixture.conn.clone();
                async move {
                    queue
                        .enqueue(&mut conn, description, Priority::DEFAULT, None)
                        .await
                        .expect("enqueue")
                }
            });
            futures::future::join_all(calls)
        })
    });
    group.finish();
}

fn claim_finish(c: &mut Criterion) {
    let fixture = Fixture::start("bench-claim");
    let consumer = "bench-worker";
    let mut group = c.benchmark_group("claim_finish");
    for batch in BATCHES {
        group.throughput(Throughput::Elements(batch as u64));
        // One cycle: claim `batch` tasks (marked running), then record them all as succeeded
        // in one pipelined round trip, as a worker's fetch loop and finisher do.
        group.bench_function(format!("batch_{batch}"), |b| {
            b.iter_custom(|iters| {
                fixture.runtime.block_on(async {
                    fixture.fill(iters as usize * batch).await;
                    let mut conn = fixture.conn.clone();
                    let started = Instant::now();
                    for _ in 0..iters {
                        let claimed = fixture
                            .queue
                            .claim(&mut conn, consumer, batch, &[] as &[Delivery])
                            .await
                            .expect("claim");
                        assert_eq!(claimed.len(), batch, "the queue was filled beforehand");
                        let finishes: Vec<Finish> = claimed
                            .into_iter()
                            .map(|task| Finish {
                                task,
                                outcome: ExecutionOutcome::Succeeded(
                                    serde_json::json!({"ok": true}),
                                ),
                            })
                            .collect();
                        fixture
                            .queue
                            .finish_many(&mut conn, consumer, &finishes)
                            .await
                            .expect("finish");
                    }
                    started.elapsed()
                })
            })
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

// What `criterion_group!` and `criterion_main!` expand to, without their undocumented `pub fn`.
fn main() {
    let mut criterion = config().configure_from_args();
    record_codec(&mut criterion);
    enqueue(&mut criterion);
    claim_finish(&mut criterion);
    criterion.final_summary();
}
