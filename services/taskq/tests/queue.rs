//! The queue protocol against a real `redis-server`: each test drives the scripts the way a
//! worker does, step by step, so a race can be replayed deterministically.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use taskq::queue::{
    ClaimedTask, Delivery, ExecutionOutcome, Finish, FinishResult, ListCursor, ListQuery, Queue,
};
use taskq::{
    Description, EnqueueOutcome, Keys, NewTask, Priority, QueueConfig, Schedule, Status, TaskId,
    TaskRecord, TaskTimeout,
};
use testkit::RedisServer;

const PREFIX: &str = "queue-test";

async fn connect(redis: &RedisServer) -> MultiplexedConnection {
    redis::Client::open(redis.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis")
}

async fn setup(redis: &RedisServer, max_attempts: u32) -> (Queue, MultiplexedConnection) {
    let queue = Queue::new(QueueConfig {
        keys: Keys::new(PREFIX),
        max_attempts,
        ..QueueConfig::default()
    });
    let mut conn = connect(redis).await;
    queue.ensure_groups(&mut conn).await.expect("groups");
    (queue, conn)
}

async fn enqueue(queue: &Queue, conn: &mut MultiplexedConnection, what: &str) -> TaskId {
    enqueue_at(queue, conn, what, Priority::DEFAULT).await
}

async fn enqueue_at(
    queue: &Queue,
    conn: &mut MultiplexedConnection,
    what: &str,
    priority: Priority,
) -> TaskId {
    let description = Description::parse(what.to_owned()).expect("valid");
    match queue
        .enqueue(conn, &description, priority, None)
        .await
        .expect("enqueue")
    {
        EnqueueOutcome::Created(record) => record.id,
        EnqueueOutcome::Replayed(id) => panic!("replayed {id}"),
    }
}

async fn record(queue: &Queue, conn: &mut MultiplexedConnection, id: &TaskId) -> TaskRecord {
    queue.get(conn, id).await.expect("get").expect("exists")
}

/// Makes `worker` look dead: its heartbeat is as old as can be.
async fn mark_dead(queue: &Queue, conn: &mut MultiplexedConnection, worker: &str) {
    redis::cmd("ZADD")
        .arg(queue.keys().workers())
        .arg(0)
        .arg(worker)
        .query_async::<i64>(conn)
        .await
        .expect("ZADD");
}

fn success(task: &ClaimedTask) -> Finish {
    Finish {
        task: task.clone(),
        outcome: ExecutionOutcome::Succeeded(serde_json::json!({"done": true})),
    }
}

#[tokio::test]
async fn item_6_the_orphan_sweep_reaches_entries_beyond_the_first_page() {
    let redis = RedisServer::start();
    let (queue, mut conn) = setup(&redis, 5).await;
    for i in 0..15 {
        enqueue(&queue, &mut conn, &format!("task {i}")).await;
    }
    // A live worker holds all fifteen; it keeps renewing the twelve oldest (long tasks), the
    // three newest are orphans (their execution was lost without the worker dying).
    let claimed = queue
        .claim(&mut conn, "live", 15, &[])
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 15);
    // A lease long enough that the ten passes below finish before the renewed entries are idle
    // for a lease again, even on a busy machine (200 ms was not: the sweep took the renewed ones).
    let lease = Duration::from_secs(1);
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let long: Vec<Delivery> = claimed[..12].iter().map(|t| t.delivery.clone()).collect();
    queue
        .renew_leases(&mut conn, "live", &long)
        .await
        .expect("renew");

    // A sweeper with room for one entry per pass: XAUTOCLAIM examines 10 × COUNT entries a pass.
    let mut swept = Vec::new();
    for _ in 0..10 {
        let reclaimed = queue
            .reclaim(&mut conn, "sweeper", Duration::from_secs(60), lease, 1)
            .await
            .expect("reclaim");
        swept.extend(reclaimed.into_iter().map(|d| d.entry_id));
    }

    let orphans: Vec<String> = claimed[12..]
        .iter()
        .map(|t| t.delivery.entry_id.clone())
        .collect();
    swept.sort();
    assert_eq!(swept, orphans, "the orphans behind the long-running head");
}

#[tokio::test]
async fn item_2_a_late_success_after_a_last_attempt_takeover_is_kept() {
    let redis = RedisServer::start();
    let (queue, mut conn) = setup(&redis, 1).await;
    let id = enqueue(&queue, &mut conn, "slow, and its worker stalls").await;
    let original = queue.claim(&mut conn, "a", 1, &[]).await.expect("claim");
    assert_eq!(original.len(), 1);

    // "a" stalls (SIGSTOP) past dead-after: "b" takes its entry over, on the last attempt.
    mark_dead(&queue, &mut conn, "a").await;
    let reclaimed = queue
        .reclaim(
            &mut conn,
            "b",
            Duration::from_secs(1),
            Duration::from_secs(60),
            10,
        )
        .await
        .expect("reclaim");
    assert_eq!(reclaimed.len(), 1);
    let started = queue
        .claim(&mut conn, "b", 0, &reclaimed)
        .await
        .expect("claim");
    assert!(started.is_empty(), "no attempt left for b: {started:?}");

    // "a" resumes (SIGCONT) and its execution succeeds.
    let results = queue
        .finish_many(&mut conn, "a", &[success(&original[0])])
        .await
        .expect("finish");

    let task = record(&queue, &mut conn, &id).await;
    assert_eq!(
        task.status.to_string(),
        "succeeded",
        "a success must never end as dead: {task:?} ({results:?})"
    );
    assert_eq!(task.result, Some(serde_json::json!({"done": true})));
    let dead_lettered: u64 = redis::cmd("XLEN")
        .arg(queue.keys().dead_letter())
        .query_async(&mut conn)
        .await
        .expect("XLEN");
    assert_eq!(dead_lettered, 0, "the provisional dead letter is withdrawn");

    // The same through the non-owner path: the takeover started an execution of its own first.
    let (queue, mut conn) = (
        Queue::new(QueueConfig {
            keys: Keys::new("queue-test-2"),
            max_attempts: 2,
            ..QueueConfig::default()
        }),
        conn,
    );
    queue.ensure_groups(&mut conn).await.expect("groups");
    let id = enqueue(&queue, &mut conn, "two attempts").await;
    let first = queue.claim(&mut conn, "a", 1, &[]).await.expect("claim");
    mark_dead(&queue, &mut conn, "a").await;
    let reclaimed = queue
        .reclaim(
            &mut conn,
            "b",
            Duration::from_secs(1),
            Duration::from_secs(60),
            10,
        )
        .await
        .expect("reclaim");
    let second = queue
        .claim(&mut conn, "b", 0, &reclaimed)
        .await
        .expect("claim");
    assert_eq!(second.len(), 1);
    let late = queue
        .finish_many(&mut conn, "a", &[success(&first[0])])
        .await
        .expect("finish");
    assert_eq!(late, vec![FinishResult::Stale]);
    assert_eq!(
        record(&queue, &mut conn, &id).await.status.to_string(),
        "succeeded"
    );
}

#[tokio::test]
async fn item_3_a_lost_claim_reply_does_not_burn_an_attempt() {
    let redis = RedisServer::start();
    let (queue, mut conn) = setup(&redis, 1).await;
    let id = enqueue(&queue, &mut conn, "claimed, reply lost").await;
    // The claim runs in Redis, its reply is lost to a timeout: the worker never starts it.
    let _lost = queue.claim(&mut conn, "w", 1, &[]).await.expect("claim");

    // The worker's recovery finds the entry pending for it and claims it again.
    let pending = queue.own_pending(&mut conn, "w", 100).await.expect("own");
    assert_eq!(pending.len(), 1);
    let started = queue
        .claim(&mut conn, "w", 0, &pending)
        .await
        .expect("claim");

    let task = record(&queue, &mut conn, &id).await;
    assert_eq!(
        started.len(),
        1,
        "the task must start, never having run: {task:?}"
    );
    assert_eq!(started[0].attempt, 1);
    assert_eq!(task.status.to_string(), "running");
    assert_eq!(task.attempts, 1);

    // A restarted process with the same WORKER_ID counts a new execution: the first one may
    // have started before the crash.
    let restarted = Queue::new(queue.config().clone());
    let pending = restarted
        .own_pending(&mut conn, "w", 100)
        .await
        .expect("own");
    let again = restarted
        .claim(&mut conn, "w", 0, &pending)
        .await
        .expect("claim");
    assert!(again.is_empty(), "max_attempts is 1: {again:?}");
    assert_eq!(
        record(&queue, &mut conn, &id).await.status.to_string(),
        "dead"
    );
}

#[tokio::test]
async fn item_8_a_record_that_is_not_a_hash_never_fails_a_claim() {
    let redis = RedisServer::start();
    let (queue, mut conn) = setup(&redis, 5).await;
    let id = enqueue(&queue, &mut conn, "its record breaks").await;
    let healthy = enqueue(&queue, &mut conn, "a healthy one").await;
    let delivered = queue
        .wait_for_entries(&mut conn, "w", 10, Duration::from_millis(100))
        .await
        .expect("read");
    assert_eq!(delivered.len(), 2);
    redis::cmd("SET")
        .arg(queue.keys().task(&id))
        .arg("not a hash")
        .query_async::<()>(&mut conn)
        .await
        .expect("SET");

    let started = queue
        .claim(&mut conn, "w", 0, &delivered)
        .await
        .expect("a claim never fails on one bad record");

    assert_eq!(started.len(), 1);
    assert_eq!(started[0].delivery.task_id, healthy.to_string());
    let pending = queue.own_pending(&mut conn, "w", 10).await.expect("own");
    assert_eq!(pending.len(), 1, "the bad entry is dropped: {pending:?}");
}

#[tokio::test]
async fn item_1_taken_over_and_fresh_entries_start_strictly_by_priority() {
    let redis = RedisServer::start();
    let (queue, mut conn) = setup(&redis, 5).await;
    let at = |p: u8| Priority::parse(i64::from(p)).expect("priority");
    enqueue_at(&queue, &mut conn, "taken over, p3", at(3)).await;
    enqueue_at(&queue, &mut conn, "taken over, p7", at(7)).await;
    // Both delivered to a worker that died; "w" takes them over.
    let ghost = queue
        .claim(&mut conn, "ghost", 2, &[])
        .await
        .expect("claim");
    assert_eq!(ghost.len(), 2);
    mark_dead(&queue, &mut conn, "ghost").await;
    let taken = queue
        .reclaim(
            &mut conn,
            "w",
            Duration::from_secs(1),
            Duration::from_secs(60),
            10,
        )
        .await
        .expect("reclaim");
    assert_eq!(taken.len(), 2);
    enqueue_at(&queue, &mut conn, "fresh, p5", at(5)).await;

    let mut order = Vec::new();
    let mut waiting = taken;
    for _ in 0..3 {
        let (started, deferred) = queue
            .claim_by_priority(&mut conn, "w", 1, &waiting)
            .await
            .expect("claim");
        assert_eq!(started.len(), 1, "one slot, one start");
        order.push((started[0].delivery.priority.get(), started[0].attempt));
        waiting = deferred;
    }

    // (priority, attempt): the taken-over p3 before the fresh p5, the fresh p5 before the
    // taken-over p7.
    assert_eq!(order, vec![(3, 2), (5, 1), (7, 2)]);
    assert!(waiting.is_empty());
}

async fn queue_on(redis: &RedisServer, prefix: &str) -> (Queue, MultiplexedConnection) {
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
async fn pending_for(conn: &mut MultiplexedConnection, stream: &str, consumer: &str) -> usize {
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

#[tokio::test]
async fn item_7_a_record_of_a_newer_layout_is_left_pending_for_a_worker_that_reads_it() {
    let redis = RedisServer::start();
    let (queue, mut conn) = setup(&redis, 5).await;
    let newer = enqueue(&queue, &mut conn, "written by the next release").await;
    // The next release's orchestrator wrote the record with layout version 2.
    redis::cmd("HSET")
        .arg(queue.keys().task(&newer))
        .arg("v")
        .arg("2")
        .query_async::<i64>(&mut conn)
        .await
        .expect("HSET");
    let healthy = enqueue(&queue, &mut conn, "one this worker reads").await;

    let started = queue.claim(&mut conn, "old", 10, &[]).await.expect("claim");
    let ids: Vec<&str> = started
        .iter()
        .map(|t| t.delivery.task_id.as_str())
        .collect();
    assert_eq!(ids, [healthy.to_string()], "only the readable task starts");

    // Untouched: not started, not dead-lettered, no attempt counted.
    let fields: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(queue.keys().task(&newer))
        .query_async(&mut conn)
        .await
        .expect("HGETALL");
    assert_eq!(fields["status"], "queued", "{fields:?}");
    assert_eq!(fields["attempts"], "0", "{fields:?}");
    assert!(!fields.contains_key("error"), "{fields:?}");
    let letters: u64 = redis::cmd("XLEN")
        .arg(queue.keys().dead_letter())
        .query_async(&mut conn)
        .await
        .expect("XLEN");
    assert_eq!(letters, 0, "nothing is dead-lettered");
    let stream = queue.keys().stream(Priority::DEFAULT);
    assert_eq!(
        pending_for(&mut conn, &stream, "old").await,
        2,
        "the newer task's entry stays pending (beside the running one)"
    );

    // With no lease renewed for it, the orphan sweep hands it to another worker after the lease:
    // in a rolling upgrade, eventually to one that reads version 2.
    tokio::time::sleep(Duration::from_millis(60)).await;
    let swept = queue
        .reclaim(
            &mut conn,
            "upgraded",
            Duration::from_secs(60),
            Duration::from_millis(50),
            100,
        )
        .await
        .expect("reclaim");
    assert!(
        swept.iter().any(|d| d.task_id == newer.to_string()),
        "{swept:?}"
    );
}

#[tokio::test]
async fn item_9_a_timeout_travels_from_the_submit_to_the_claim_and_binds_the_key() {
    let redis = RedisServer::start();
    let (queue, mut conn) = setup(&redis, 5).await;
    let scope = taskq::IdempotencyScope::open();
    let mut task = NewTask::new(
        Description::parse("bounded".to_owned()).expect("valid"),
        Priority::DEFAULT,
    );
    task.timeout = Some(TaskTimeout::from_millis(1500).expect("valid"));
    let EnqueueOutcome::Created(created) = queue
        .enqueue_in_scope(&mut conn, &task, &scope, Some("k"))
        .await
        .expect("enqueue")
    else {
        panic!("replayed")
    };
    assert_eq!(created.timeout_ms, Some(1500));
    assert_eq!(
        record(&queue, &mut conn, &created.id).await.timeout_ms,
        Some(1500)
    );
    let plain = enqueue(&queue, &mut conn, "default deadline").await;
    assert_eq!(record(&queue, &mut conn, &plain).await.timeout_ms, None);

    // The key is bound to the timeout too: the same body with another deadline is refused.
    task.timeout = Some(TaskTimeout::from_millis(1501).expect("valid"));
    let reused = queue
        .enqueue_in_scope(&mut conn, &task, &scope, Some("k"))
        .await;
    assert!(
        matches!(reused, Err(taskq::QueueError::IdempotencyKeyReused { .. })),
        "{reused:?}"
    );

    let started = queue.claim(&mut conn, "w", 10, &[]).await.expect("claim");
    let timeouts: Vec<_> = started.iter().map(|t| t.timeout).collect();
    assert_eq!(
        timeouts,
        [Some(TaskTimeout::from_millis(1500).expect("valid")), None]
    );
}

#[tokio::test]
async fn item_9_an_interrupted_execution_gives_its_attempt_back_and_runs_again() {
    let redis = RedisServer::start();
    let (queue, mut conn) = setup(&redis, 1).await;
    let id = enqueue(&queue, &mut conn, "outlives its worker's grace").await;
    let started = queue.claim(&mut conn, "w", 1, &[]).await.expect("claim");
    assert_eq!(started.len(), 1);
    let interrupted = Finish {
        task: started[0].clone(),
        outcome: ExecutionOutcome::Interrupted {
            error: "interrupted: the worker shut down".into(),
        },
    };
    let results = queue
        .finish_many(&mut conn, "w", &[interrupted])
        .await
        .expect("finish");
    assert_eq!(results, [FinishResult::Recorded]);
    let task = record(&queue, &mut conn, &id).await;
    assert_eq!(task.status, Status::Retrying, "{task:?}");
    assert_eq!(task.attempts, 0, "the attempt is given back: {task:?}");
    assert!(task.error.as_deref().unwrap_or("").contains("interrupted"));

    // Due at once; with max_attempts = 1 it still runs (and is not dead-lettered as lost).
    assert_eq!(
        queue
            .promote_due_retries(&mut conn, 10)
            .await
            .expect("promote"),
        1
    );
    let again = queue.claim(&mut conn, "w2", 1, &[]).await.expect("claim");
    assert_eq!(again.len(), 1, "{:?}", record(&queue, &mut conn, &id).await);
    assert_eq!(again[0].attempt, 1);
    queue
        .finish_many(&mut conn, "w2", &[success(&again[0])])
        .await
        .expect("finish");
    assert_eq!(
        record(&queue, &mut conn, &id).await.status,
        Status::Succeeded
    );
}

#[tokio::test]
async fn a_scheduled_task_waits_for_its_time_and_can_be_cancelled_until_then() {
    let redis = RedisServer::start();
    let (queue, mut conn) = setup(&redis, 5).await;
    let scope = taskq::IdempotencyScope::open();
    let scheduled = |what: &str, schedule| {
        let mut task = NewTask::new(
            Description::parse(what.to_owned()).expect("valid"),
            Priority::DEFAULT,
        );
        task.schedule = Some(schedule);
        task
    };
    let created = |outcome| match outcome {
        EnqueueOutcome::Created(record) => record,
        EnqueueOutcome::Replayed(id) => panic!("replayed {id}"),
    };
    let soon = created(
        queue
            .enqueue_in_scope(
                &mut conn,
                &scheduled("soon", Schedule::Delay(200)),
                &scope,
                None,
            )
            .await
            .expect("enqueue"),
    );
    let later = created(
        queue
            .enqueue_in_scope(
                &mut conn,
                &scheduled("later", Schedule::Delay(60_000)),
                &scope,
                None,
            )
            .await
            .expect("enqueue"),
    );
    let past = time::OffsetDateTime::now_utc() - time::Duration::seconds(5);
    let at_once = created(
        queue
            .enqueue_in_scope(
                &mut conn,
                &scheduled("at once", Schedule::At(past)),
                &scope,
                None,
            )
            .await
            .expect("enqueue"),
    );
    assert_eq!(soon.status, Status::Scheduled);
    let due = soon.run_at.expect("run_at") - soon.created_at;
    assert_eq!(due, time::Duration::milliseconds(200), "{soon:?}");
    assert_eq!(
        record(&queue, &mut conn, &soon.id).await.status,
        Status::Scheduled
    );
    assert_eq!(
        at_once.status,
        Status::Queued,
        "a time in the past: queued at once"
    );

    // Before its time nothing but the past one is claimable, and promotion moves nothing.
    let started = queue.claim(&mut conn, "w", 10, &[]).await.expect("claim");
    let ids: Vec<&str> = started
        .iter()
        .map(|t| t.delivery.task_id.as_str())
        .collect();
    assert_eq!(ids, [at_once.id.to_string()]);
    let (moved, next) = queue.promote_due(&mut conn, 100).await.expect("promote");
    assert_eq!(moved, 0);
    assert!(
        next.is_some_and(|next| next <= Duration::from_millis(200)),
        "{next:?}"
    );
    assert_eq!(
        queue.cancel(&mut conn, &later.id).await.expect("cancel"),
        taskq::queue::CancelOutcome::Cancelled
    );

    tokio::time::sleep(Duration::from_millis(250)).await;
    let (moved, next) = queue.promote_due(&mut conn, 100).await.expect("promote");
    assert_eq!(moved, 1, "only the due one: the other is cancelled");
    assert_eq!(next, None, "nothing else waits");
    assert_eq!(
        record(&queue, &mut conn, &soon.id).await.status,
        Status::Queued
    );
    let started = queue.claim(&mut conn, "w", 10, &[]).await.expect("claim");
    let ids: Vec<&str> = started
        .iter()
        .map(|t| t.delivery.task_id.as_str())
        .collect();
    assert_eq!(ids, [soon.id.to_string()]);
    assert_eq!(
        record(&queue, &mut conn, &later.id).await.status,
        Status::Cancelled
    );
}

/// Redis's clock going back must not hold a retry for the jump's length. The jump is played by
/// the retry clock's record: the latest time a promotion saw lies 20 s ahead of Redis's `TIME`,
/// as after a 20 s backward jump. The promotion then adds the jump to the retry clock's skew,
/// and a retry scheduled after it (100 ms backoff) is due 100 ms later, not 20 s.
#[tokio::test]
async fn a_backward_clock_jump_does_not_hold_retries_for_its_length() {
    let redis = RedisServer::start();
    let (queue, mut conn) = setup(&redis, 3).await;
    let clock = Keys::new(PREFIX).clock();
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    let now_ms = secs * 1000 + micros / 1000;
    let _: () = redis::cmd("HSET")
        .arg(&clock)
        .arg("seen")
        .arg(now_ms + 20_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    queue.promote_due(&mut conn, 10).await.expect("promote");
    let skew: i64 = redis::cmd("HGET")
        .arg(&clock)
        .arg("skew")
        .query_async(&mut conn)
        .await
        .expect("the jump was recorded as skew");
    assert!((19_000..=20_100).contains(&skew), "skew {skew} ms");

    let id = enqueue(&queue, &mut conn, "fails once").await;
    let started = queue.claim(&mut conn, "w", 1, &[]).await.expect("claim");
    let failed = Finish {
        task: started[0].clone(),
        outcome: ExecutionOutcome::Retrying {
            error: "transient".into(),
            delay: Duration::from_millis(100),
        },
    };
    queue
        .finish_many(&mut conn, "w", &[failed])
        .await
        .expect("finish");
    let (_, next) = queue.promote_due(&mut conn, 10).await.expect("promote");
    let next = next.expect("the retry waits");
    assert!(
        next <= Duration::from_millis(100),
        "due in {next:?}, not after the jump's length"
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (moved, _) = queue.promote_due(&mut conn, 10).await.expect("promote");
    assert_eq!(moved, 1, "{:?}", record(&queue, &mut conn, &id).await);
}

/// A dead letter queued again starts a new attempt series at its priority, keeps its last
/// error, and no longer expires; a task in any other state is left alone.
#[tokio::test]
async fn a_dead_task_retried_runs_again_with_its_error_kept_and_no_expiry() {
    let redis = RedisServer::start();
    let (queue, mut conn) = setup(&redis, 1).await;
    let id = enqueue(&queue, &mut conn, "fails for good").await;
    assert_eq!(
        queue.retry(&mut conn, &id).await.expect("retry"),
        taskq::queue::RetryOutcome::NotRetryable(Status::Queued)
    );
    let started = queue.claim(&mut conn, "w", 1, &[]).await.expect("claim");
    let dead = Finish {
        task: started[0].clone(),
        outcome: ExecutionOutcome::Dead {
            error: "permanent: bad input".into(),
        },
    };
    queue
        .finish_many(&mut conn, "w", &[dead])
        .await
        .expect("finish");
    let key = Keys::new(PREFIX).task(&id);
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(record(&queue, &mut conn, &id).await.status, Status::Dead);

    assert_eq!(
        queue.retry(&mut conn, &id).await.expect("retry"),
        taskq::queue::RetryOutcome::Queued
    );
    let task = record(&queue, &mut conn, &id).await;
    assert_eq!(task.status, Status::Queued, "{task:?}");
    assert_eq!(task.attempts, 0, "a new attempt series: {task:?}");
    assert_eq!(task.error.as_deref(), Some("permanent: bad input"));
    assert!(task.finished_at.is_none(), "{task:?}");
    let ttl_after: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    println!("TTL dead {ttl} s, after the retry {ttl_after}");
    assert_eq!(ttl_after, -1, "a queued task does not expire");

    let again = queue.claim(&mut conn, "w2", 1, &[]).await.expect("claim");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, 1);
    queue
        .finish_many(&mut conn, "w2", &[success(&again[0])])
        .await
        .expect("finish");
    assert_eq!(
        record(&queue, &mut conn, &id).await.status,
        Status::Succeeded
    );
    assert_eq!(
        queue.retry(&mut conn, &id).await.expect("retry"),
        taskq::queue::RetryOutcome::NotRetryable(Status::Succeeded)
    );
    let unknown = TaskId::parse("00000000-0000-4000-8000-000000000000").unwrap();
    assert_eq!(
        queue.retry(&mut conn, &unknown).await.expect("retry"),
        taskq::queue::RetryOutcome::NotFound
    );
}

/// Every page of `status` (and `priority`), `limit` at a time: the ids in order, the most
/// tasks one page held, and how many pages it took.
async fn list_all(
    queue: &Queue,
    conn: &mut MultiplexedConnection,
    status: Status,
    priority: Option<Priority>,
    limit: usize,
) -> (Vec<TaskId>, usize, usize) {
    let mut ids = Vec::new();
    let mut cursor = None;
    let mut fullest = 0;
    for pages in 1..100 {
        let page = queue
            .list(
                conn,
                &ListQuery {
                    status,
                    priority,
                    limit,
                    cursor,
                },
            )
            .await
            .expect("list");
        fullest = fullest.max(page.tasks.len());
        for task in &page.tasks {
            assert_eq!(task.status, status, "{task:?}");
            if let Some(p) = priority {
                assert_eq!(task.priority, p, "{task:?}");
            }
            ids.push(task.id);
        }
        match page.next_cursor {
            Some(next) => {
                // the cursor survives the trip through a query string
                cursor = Some(ListCursor::parse(status, &next.to_string()).expect("cursor"));
            }
            None => return (ids, fullest, pages),
        }
    }
    panic!("listing {status} never ended");
}

#[tokio::test]
async fn tasks_are_listed_by_status_page_by_page_with_bounded_pages() {
    let redis = RedisServer::start();
    let (queue, mut conn) = setup(&redis, 3).await;
    let at = |p: u8| Priority::parse(i64::from(p)).expect("priority");
    let urgent = enqueue_at(&queue, &mut conn, "urgent", at(1)).await;
    let mut normal = Vec::new();
    for i in 0..7 {
        normal.push(enqueue_at(&queue, &mut conn, &format!("normal {i}"), at(5)).await);
    }
    // running: the urgent one and the first normal one
    let started = queue.claim(&mut conn, "w", 2, &[]).await.expect("claim");
    assert_eq!(started.len(), 2);
    // succeeded, retrying, dead: three more
    let more = queue.claim(&mut conn, "w", 3, &[]).await.expect("claim");
    let finishes = vec![
        success(&more[0]),
        Finish {
            task: more[1].clone(),
            outcome: ExecutionOutcome::Retrying {
                error: "flaky".into(),
                delay: Duration::from_secs(600),
            },
        },
        Finish {
            task: more[2].clone(),
            outcome: ExecutionOutcome::Dead {
                error: "bad input".into(),
            },
        },
    ];
    queue
        .finish_many(&mut conn, "w", &finishes)
        .await
        .expect("finish");
    // cancelled: one of the queued; scheduled: a new one
    assert_eq!(
        queue.cancel(&mut conn, &normal[6]).await.expect("cancel"),
        taskq::queue::CancelOutcome::Cancelled
    );
    let later = match queue
        .enqueue_in_scope(
            &mut conn,
            &NewTask {
                schedule: Some(Schedule::Delay(600_000)),
                ..NewTask::new(Description::parse("later".into()).unwrap(), at(5))
            },
            &taskq::IdempotencyScope::open(),
            None,
        )
        .await
        .expect("enqueue")
    {
        EnqueueOutcome::Created(record) => record.id,
        EnqueueOutcome::Replayed(id) => panic!("replayed {id}"),
    };

    let (running, _, _) = list_all(&queue, &mut conn, Status::Running, None, 100).await;
    assert_eq!(running, vec![urgent, normal[0]]);
    // queued: normal[4], normal[5], oldest first; pages of one
    let (queued, fullest, _) = list_all(&queue, &mut conn, Status::Queued, None, 1).await;
    assert_eq!(queued, vec![normal[4], normal[5]]);
    assert_eq!(fullest, 1, "a page never holds more than its limit");
    let (queued_p1, _, _) = list_all(&queue, &mut conn, Status::Queued, Some(at(1)), 10).await;
    assert!(queued_p1.is_empty(), "{queued_p1:?}");
    let (running_p1, _, _) = list_all(&queue, &mut conn, Status::Running, Some(at(1)), 10).await;
    assert_eq!(running_p1, vec![urgent]);
    // Running tasks are found among the delivered entries only: a backlog of queued ones behind
    // them costs no page.
    for i in 0..20 {
        enqueue_at(&queue, &mut conn, &format!("backlog {i}"), at(1)).await;
    }
    let (running, _, pages) = list_all(&queue, &mut conn, Status::Running, None, 1).await;
    assert_eq!(running, vec![urgent, normal[0]]);
    assert!(pages <= 3, "{pages} pages of one for two running tasks");
    let id_of = |task: &ClaimedTask| TaskId::parse(&task.delivery.task_id).expect("id");
    for (status, expected) in [
        (Status::Succeeded, id_of(&more[0])),
        (Status::Retrying, id_of(&more[1])),
        (Status::Dead, id_of(&more[2])),
        (Status::Cancelled, normal[6]),
        (Status::Scheduled, later),
    ] {
        let (ids, _, _) = list_all(&queue, &mut conn, status, None, 2).await;
        assert_eq!(ids, vec![expected], "{status}");
    }

    // finished tasks come newest first, across finish batches
    let rest = queue.claim(&mut conn, "w", 2, &[]).await.expect("claim");
    for task in &rest {
        queue
            .finish_many(&mut conn, "w", &[success(task)])
            .await
            .expect("finish");
    }
    let (succeeded, fullest, _) = list_all(&queue, &mut conn, Status::Succeeded, None, 1).await;
    assert_eq!(fullest, 1);
    let newest_first: Vec<TaskId> = [&rest[1], &rest[0], &more[0]]
        .into_iter()
        .map(id_of)
        .collect();
    assert_eq!(succeeded, newest_first);
    let stats = queue
        .stats(&mut conn, Duration::from_secs(60))
        .await
        .expect("stats");
    assert_eq!(stats.succeeded_total, 3, "the throughput counter");
    assert_eq!(stats.scheduled, 1);

    // a cursor of another listing's form is refused before Redis sees it
    assert!(ListCursor::parse(Status::Queued, "garbage").is_err());
    assert!(ListCursor::parse(Status::Scheduled, "5/1-0").is_err());
    assert!(ListCursor::parse(Status::Queued, "11/1-0").is_err());
    assert!(ListCursor::parse(Status::Dead, "1-0/x").is_err());
}

#[tokio::test]
async fn a_paused_priority_is_not_started_but_its_taken_over_tasks_are() {
    let redis = RedisServer::start();
    let (queue, mut conn) = setup(&redis, 5).await;
    let at = |p: u8| Priority::parse(i64::from(p)).expect("priority");
    // A task of priority 2 runs on a worker that dies.
    let orphan = enqueue_at(&queue, &mut conn, "orphan, p2", at(2)).await;
    let ghost = queue
        .claim(&mut conn, "ghost", 1, &[])
        .await
        .expect("claim");
    assert_eq!(ghost.len(), 1);
    mark_dead(&queue, &mut conn, "ghost").await;

    queue
        .set_paused(&mut conn, at(2), true)
        .await
        .expect("pause");
    assert_eq!(queue.paused(&mut conn).await.expect("paused"), vec![at(2)]);
    let waiting = enqueue_at(&queue, &mut conn, "waits, p2", at(2)).await;
    let other = enqueue_at(&queue, &mut conn, "runs, p6", at(6)).await;

    // Fresh entries of the paused level are not started; the others are.
    let (started, deferred) = queue
        .claim_by_priority(&mut conn, "w", 10, &[])
        .await
        .expect("claim");
    let ids: Vec<String> = started.iter().map(|t| t.delivery.task_id.clone()).collect();
    assert_eq!(ids, vec![other.to_string()]);
    assert!(deferred.is_empty());
    assert_eq!(
        record(&queue, &mut conn, &waiting).await.status,
        Status::Queued
    );

    // The dead worker's running task of the paused level is taken over and runs again.
    let taken = queue
        .reclaim(
            &mut conn,
            "w",
            Duration::from_secs(1),
            Duration::from_secs(60),
            10,
        )
        .await
        .expect("reclaim");
    assert_eq!(taken.len(), 1);
    let (started, deferred) = queue
        .claim_by_priority(&mut conn, "w", 10, &taken)
        .await
        .expect("claim");
    assert_eq!(started.len(), 1, "{started:?} {deferred:?}");
    assert_eq!(started[0].delivery.task_id, orphan.to_string());
    assert_eq!(started[0].attempt, 2);

    // An entry of the paused level delivered by a blocking read is held, not started.
    let delivered = queue
        .wait_for_entries(&mut conn, "w", 10, Duration::from_millis(10))
        .await
        .expect("read");
    assert_eq!(delivered.len(), 1);
    let (started, deferred) = queue
        .claim_by_priority(&mut conn, "w", 10, &delivered)
        .await
        .expect("claim");
    assert!(started.is_empty(), "{started:?}");
    assert_eq!(deferred, delivered, "held for later, still pending for w");

    // Resumed: it starts.
    queue
        .set_paused(&mut conn, at(2), false)
        .await
        .expect("resume");
    assert!(queue.paused(&mut conn).await.expect("paused").is_empty());
    let (started, _) = queue
        .claim_by_priority(&mut conn, "w", 10, &deferred)
        .await
        .expect("claim");
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].delivery.task_id, waiting.to_string());
}

/// The number of keys of every enqueue script call Redis has run, oldest first (its slow log,
/// set to record every command).
async fn enqueue_calls_keys(conn: &mut MultiplexedConnection) -> Vec<usize> {
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(1000)
        .query_async(conn)
        .await
        .expect("slowlog");
    let mut keys = Vec::new();
    for entry in entries.into_iter().rev() {
        // [id, time, duration, [command and arguments], client, name]
        let redis::Value::Array(fields) = entry else {
            panic!("slowlog entry {entry:?}")
        };
        let argv: Vec<String> = redis::from_redis_value(fields[3].clone()).expect("argv");
        if argv[0].eq_ignore_ascii_case("evalsha") && argv.iter().any(|a| a.starts_with("count ")) {
            keys.push(argv[2].parse().expect("numkeys"));
        }
    }
    keys
}

#[tokio::test]
async fn an_enqueue_hands_in_the_streams_only_when_the_backpressure_count_may_have_expired() {
    let redis = RedisServer::start();
    let queue = Queue::new(QueueConfig {
        keys: Keys::new(PREFIX),
        max_queued: 3,
        // long enough that the test never outlives it by itself
        waiting_count_ttl: Duration::from_secs(60),
        ..QueueConfig::default()
    });
    let mut conn = connect(&redis).await;
    queue.ensure_groups(&mut conn).await.expect("groups");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(0)
        .query_async(&mut conn)
        .await
        .expect("slowlog on");
    let count_key = Keys::new(PREFIX).waiting_count();
    let expire_count = |conn: &mut MultiplexedConnection| {
        let mut conn = conn.clone();
        let key = count_key.clone();
        async move {
            let _: () = redis::cmd("DEL")
                .arg(key)
                .query_async(&mut conn)
                .await
                .expect("del");
        }
    };

    let first = enqueue(&queue, &mut conn, "count 1").await;
    let second = enqueue(&queue, &mut conn, "count 2").await;
    // The count expires early (as it would if its period ran out between two calls): the next
    // short call writes nothing and is made again with the streams, which are counted.
    expire_count(&mut conn).await;
    let third = enqueue(&queue, &mut conn, "count 3").await;
    expire_count(&mut conn).await;
    let description = Description::parse("count 4".to_owned()).expect("valid");
    let refused = queue
        .enqueue(&mut conn, &description, Priority::DEFAULT, None)
        .await;

    // full (it counts), short, short then full, short then full (refused)
    let (full, short) = (14, 4);
    assert_eq!(
        enqueue_calls_keys(&mut conn).await,
        [full, short, short, full, short, full]
    );
    assert!(
        matches!(
            refused,
            Err(taskq::queue::QueueError::QueueFull {
                waiting: 3,
                limit: 3
            })
        ),
        "{refused:?}"
    );
    for id in [&first, &second, &third] {
        assert_eq!(record(&queue, &mut conn, id).await.status, Status::Queued);
    }
    let entries: usize = redis::cmd("XLEN")
        .arg(Keys::new(PREFIX).stream(Priority::DEFAULT))
        .query_async(&mut conn)
        .await
        .expect("xlen");
    assert_eq!(entries, 3, "the refused and the short calls wrote nothing");
}

#[tokio::test]
async fn a_record_written_before_records_named_their_entry_gets_it_when_claimed() {
    let redis = RedisServer::start();
    let (queue, mut conn) = setup(&redis, 3).await;
    let id = enqueue(&queue, &mut conn, "from an older release").await;
    let key = Keys::new(PREFIX).task(&id);
    let _: () = redis::cmd("HDEL")
        .arg(&key)
        .arg("stream_id")
        .query_async(&mut conn)
        .await
        .expect("hdel");

    let (started, _) = queue
        .claim_by_priority(&mut conn, "w", 10, &[])
        .await
        .expect("claim");

    assert_eq!(started.len(), 1, "{started:?}");
    let stored: Option<String> = redis::cmd("HGET")
        .arg(&key)
        .arg("stream_id")
        .query_async(&mut conn)
        .await
        .expect("hget");
    assert_eq!(
        stored.as_deref(),
        Some(started[0].delivery.entry_id.as_str())
    );
    assert_eq!(record(&queue, &mut conn, &id).await.status, Status::Running);
}
