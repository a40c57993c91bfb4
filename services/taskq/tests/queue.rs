//! The queue protocol against a real `redis-server` (never a mock): the guarantees the scripts
//! give on their own, without a worker around them.

use std::time::Duration;

use taskq::queue::{Delivery, ExecutionOutcome, Finish, FinishResult, Queue};
use taskq::{Description, EnqueueOutcome, Keys, Priority, QueueConfig, Status};
use testkit::RedisServer;

async fn queue_on(redis: &RedisServer, prefix: &str) -> (Queue, redis::aio::MultiplexedConnection) {
    let client = redis::Client::open(redis.url()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connecting to redis");
    let queue = Queue::new(QueueConfig {
        keys: Keys::new(prefix),
        ..QueueConfig::default()
    });
    queue.load_scripts(&mut conn).await.expect("scripts");
    queue.ensure_groups(&mut conn).await.expect("groups");
    (queue, conn)
}

/// How many entries are pending for `consumer` on `stream`.
async fn pending_for(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    consumer: &str,
) -> usize {
    let rows: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(taskq::keys::CONSUMER_GROUP)
        .arg("-")
        .arg("+")
        .arg(10)
        .arg(consumer)
        .query_async(conn)
        .await
        .expect("XPENDING");
    rows.len()
}

/// The invariant "a stream entry is acknowledged only by the execution that owns it": a worker
/// presumed dead finishes after its task was taken over, and the successor's entry must stay
/// pending until the successor itself finishes.
#[tokio::test]
async fn only_the_owning_execution_acknowledges_a_taken_over_entry() {
    let redis = RedisServer::start();
    let (queue, mut conn) = queue_on(&redis, "owner-ack").await;
    let description = Description::parse("report".to_owned()).expect("valid");
    let priority = Priority::parse(3).expect("valid");
    let EnqueueOutcome::Created(record) = queue
        .enqueue(&mut conn, &description, priority, None)
        .await
        .expect("enqueue")
    else {
        panic!("a fresh task is created");
    };
    let stream = Keys::new("owner-ack").stream(priority);

    // Worker A starts the task, then is presumed dead (it left with work pending).
    queue
        .heartbeat(&mut conn, "worker-a")
        .await
        .expect("heartbeat");
    let first = queue
        .claim(&mut conn, "worker-a", 1, &[])
        .await
        .expect("claim by A");
    assert_eq!(first.len(), 1, "A claims the task");
    assert_eq!(
        queue
            .deregister(&mut conn, "worker-a")
            .await
            .expect("deregister"),
        1,
        "A still holds its entry, so it is only marked dead"
    );

    // Worker B takes the entry over and starts attempt 2.
    queue
        .heartbeat(&mut conn, "worker-b")
        .await
        .expect("heartbeat");
    let taken: Vec<Delivery> = queue
        .reclaim(
            &mut conn,
            "worker-b",
            Duration::from_millis(1),
            Duration::from_secs(30),
            10,
        )
        .await
        .expect("reclaim");
    assert_eq!(taken.len(), 1, "B takes A's entry over");
    let second = queue
        .claim(&mut conn, "worker-b", 0, &taken)
        .await
        .expect("claim by B");
    assert_eq!(second.len(), 1, "B starts the taken-over entry");
    assert_eq!(second[0].attempt, 2);

    // A comes back and reports a failure of its (stale) attempt 1: nothing of B's may change.
    let late = queue
        .finish_many(
            &mut conn,
            "worker-a",
            &[Finish {
                task: first[0].clone(),
                outcome: ExecutionOutcome::Retrying {
                    error: "A's late failure".into(),
                    delay: Duration::from_millis(10),
                },
            }],
        )
        .await
        .expect("finish by A");
    assert_eq!(late, vec![FinishResult::Stale], "A no longer owns the task");
    assert_eq!(
        pending_for(&mut conn, &stream, "worker-b").await,
        1,
        "B's entry must stay pending after A's stale finish"
    );
    let task_id = record.id;
    let running = queue
        .get(&mut conn, &task_id)
        .await
        .expect("get")
        .expect("record exists");
    assert_eq!(running.status, Status::Running, "still B's running attempt");

    // B finishes: now the entry is acknowledged and the task succeeded.
    let done = queue
        .finish_many(
            &mut conn,
            "worker-b",
            &[Finish {
                task: second[0].clone(),
                outcome: ExecutionOutcome::Succeeded(serde_json::json!({"ok": true})),
            }],
        )
        .await
        .expect("finish by B");
    assert_eq!(done, vec![FinishResult::Recorded]);
    assert_eq!(pending_for(&mut conn, &stream, "worker-b").await, 0);
    let record = queue
        .get(&mut conn, &task_id)
        .await
        .expect("get")
        .expect("record exists");
    assert_eq!(record.status, Status::Succeeded);
}
