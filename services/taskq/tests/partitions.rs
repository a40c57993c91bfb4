//! A partitioned queue against a real `redis-server`: tasks spread over the partitions and are
//! found again through their ids, replays land where the first request did, listings and
//! statistics cover every partition — and, on a Redis in cluster mode, every operation of the
//! protocol keeps to its partition's hash slot (Redis refuses a script that touches keys of
//! two slots, or one its node does not own).

use std::collections::HashSet;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use taskq::queue::{
    CancelOutcome, ClaimedTask, ExecutionOutcome, Finish, FinishResult, ListQuery, RetryOutcome,
};
use taskq::{
    Description, EnqueueOutcome, IdempotencyScope, Keys, NewTask, Partitions, Priority,
    QueueConfig, Schedule, Status, TaskId,
};
use testkit::{RedisConfig, RedisServer};

async fn connect(redis: &RedisServer) -> MultiplexedConnection {
    redis::Client::open(redis.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis")
}

async fn setup(
    redis: &RedisServer,
    prefix: &str,
    count: u16,
) -> (Partitions, MultiplexedConnection) {
    let partitions = Partitions::new(
        QueueConfig {
            keys: Keys::new(prefix),
            max_attempts: 2,
            ..QueueConfig::default()
        },
        count,
    );
    let mut conn = connect(redis).await;
    for queue in partitions.all() {
        queue.ensure_groups(&mut conn).await.expect("groups");
    }
    (partitions, conn)
}

fn task(what: &str) -> NewTask {
    NewTask::new(
        Description::parse(what.to_owned()).expect("valid"),
        Priority::DEFAULT,
    )
}

async fn submit(
    partitions: &Partitions,
    conn: &mut MultiplexedConnection,
    new: &NewTask,
    key: Option<&str>,
) -> EnqueueOutcome {
    let scope = IdempotencyScope::open();
    partitions
        .for_new_task(&scope, key)
        .enqueue_in_scope(conn, new, &scope, key)
        .await
        .expect("enqueue")
}

fn created(outcome: EnqueueOutcome) -> TaskId {
    match outcome {
        EnqueueOutcome::Created(record) => record.id,
        EnqueueOutcome::Replayed(id) => panic!("replayed {id}"),
    }
}

#[tokio::test]
async fn tasks_spread_over_the_partitions_and_are_found_by_their_ids() {
    let redis = RedisServer::start();
    let (partitions, mut conn) = setup(&redis, "spread", 3).await;

    let mut ids = Vec::new();
    for n in 0..9 {
        ids.push(created(
            submit(&partitions, &mut conn, &task(&format!("t{n}")), None).await,
        ));
    }
    // round robin: three in each partition, each in the stream of its own partition
    let per_partition: Vec<usize> = (0..3)
        .map(|p| ids.iter().filter(|id| id.partition(3) == p).count())
        .collect();
    assert_eq!(per_partition, [3, 3, 3]);
    for queue in partitions.all() {
        let len: usize = redis::cmd("XLEN")
            .arg(queue.keys().stream(Priority::DEFAULT))
            .query_async(&mut conn)
            .await
            .expect("XLEN");
        assert_eq!(len, 3, "{:?}", queue.keys().partition());
    }
    for id in &ids {
        let record = partitions
            .of_task(id)
            .get(&mut conn, id)
            .await
            .expect("get")
            .expect("found in its partition");
        assert_eq!(record.id, *id);
        // and in no other
        for queue in partitions.all() {
            if queue.keys().partition().index != id.partition(3) {
                assert!(queue.get(&mut conn, id).await.expect("get").is_none());
            }
        }
    }

    // a replay lands on the partition of the first request and finds it
    let first = created(submit(&partitions, &mut conn, &task("once"), Some("key-1")).await);
    for _ in 0..3 {
        match submit(&partitions, &mut conn, &task("once"), Some("key-1")).await {
            EnqueueOutcome::Replayed(id) => assert_eq!(id, first),
            EnqueueOutcome::Created(record) => panic!("created {} again", record.id),
        }
    }

    // cancel and retry go to the task's partition
    assert_eq!(
        partitions
            .of_task(&ids[4])
            .cancel(&mut conn, &ids[4])
            .await
            .expect("cancel"),
        CancelOutcome::Cancelled
    );
    assert_eq!(
        partitions
            .of_task(&ids[4])
            .retry(&mut conn, &ids[4])
            .await
            .expect("retry"),
        RetryOutcome::Queued
    );

    // statistics add the partitions up
    let stats = partitions
        .stats(&mut conn, Duration::from_secs(5))
        .await
        .expect("stats");
    assert_eq!(stats.queued.iter().sum::<u64>(), 10);

    // a listing walks every partition, each task once, with small pages
    let mut listed = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = partitions
            .list(
                &mut conn,
                &ListQuery {
                    status: Status::Queued,
                    priority: None,
                    limit: 2,
                    cursor: cursor.take(),
                },
            )
            .await
            .expect("list");
        pages += 1;
        listed.extend(page.tasks.into_iter().map(|record| record.id));
        match page.next_cursor {
            // cursors go through the API as text
            Some(next) => {
                cursor = Some(
                    partitions
                        .parse_cursor(Status::Queued, &next.to_string())
                        .expect("a cursor the listing wrote parses"),
                );
            }
            None => break,
        }
        assert!(pages < 50, "the listing does not end");
    }
    let unique: HashSet<TaskId> = listed.iter().copied().collect();
    assert_eq!(unique.len(), listed.len(), "listed twice: {listed:?}");
    let mut expected: HashSet<TaskId> = ids.iter().copied().collect();
    expected.insert(first);
    assert_eq!(unique, expected);

    // a pause applies to every partition
    partitions
        .set_paused(&mut conn, Priority::DEFAULT, true)
        .await
        .expect("pause");
    for queue in partitions.all() {
        assert_eq!(
            queue.paused(&mut conn).await.expect("paused"),
            vec![Priority::DEFAULT]
        );
    }
}

/// A one-node Redis Cluster that owns every slot: a client that is not cluster-aware can talk
/// to it, and Redis still checks every key a command or script touches against the slots.
fn cluster_node() -> RedisServer {
    let redis = RedisConfig::new()
        .extra_args([
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
        ])
        .start()
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut conn = redis::Client::open(redis.url())
        .expect("url")
        .get_connection()
        .expect("redis");
    let _: () = redis::cmd("CLUSTER")
        .arg("ADDSLOTSRANGE")
        .arg(0)
        .arg(16_383)
        .query(&mut conn)
        .expect("CLUSTER ADDSLOTSRANGE");
    for _ in 0..100 {
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query(&mut conn)
            .expect("INFO");
        if info.contains("cluster_state:ok") {
            return redis;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the one-node cluster did not come up");
}

#[tokio::test]
async fn every_operation_of_a_partition_keeps_to_its_hash_slot() {
    let redis = cluster_node();
    let (partitions, mut conn) = setup(&redis, "slots", 3).await;
    let scope = IdempotencyScope::open();
    let worker = "w1";
    let dead_after = Duration::from_secs(5);

    for queue in partitions.all() {
        let partition = queue.keys().partition();
        let index = partition.index;
        let submit_conn = conn.clone();
        let submit = |new: NewTask, key: Option<&'static str>| {
            let mut conn = submit_conn.clone();
            let scope = scope.clone();
            async move {
                queue
                    .enqueue_in_scope(&mut conn, &new, &scope, key)
                    .await
                    .unwrap_or_else(|e| panic!("enqueue in partition {index}: {e}"))
            }
        };
        let ok = created(submit(task("succeeds"), Some("k")).await);
        let fails = created(submit(task("fails"), None).await);
        let dies = created(submit(task("dies"), None).await);
        let cancelled = created(submit(task("cancelled"), None).await);
        let mut later = task("later");
        later.schedule = Some(Schedule::Delay(1));
        let scheduled = created(submit(later, None).await);
        assert!(
            [ok, fails, dies, cancelled, scheduled]
                .iter()
                .all(|id| id.partition(3) == index)
        );
        match submit(task("succeeds"), Some("k")).await {
            EnqueueOutcome::Replayed(id) => assert_eq!(id, ok),
            EnqueueOutcome::Created(_) => panic!("created twice"),
        }
        assert_eq!(
            queue.cancel(&mut conn, &cancelled).await.expect("cancel"),
            CancelOutcome::Cancelled
        );

        queue.heartbeat(&mut conn, worker).await.expect("heartbeat");
        let waited = queue
            .wait_for_entries(&mut conn, worker, 10, Duration::from_millis(10))
            .await
            .expect("wait");
        let claimed: Vec<ClaimedTask> = queue
            .claim(&mut conn, worker, 10, &waited)
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 3, "partition {index}");
        queue
            .renew_leases(
                &mut conn,
                worker,
                &claimed
                    .iter()
                    .map(|t| t.delivery.clone())
                    .collect::<Vec<_>>(),
            )
            .await
            .expect("renew");
        assert_eq!(
            queue
                .own_pending(&mut conn, worker, 10)
                .await
                .expect("own")
                .len(),
            3
        );
        let outcome = |t: &ClaimedTask| match t.delivery.task_id.as_str() {
            id if id == ok.to_string() => ExecutionOutcome::Succeeded(serde_json::json!(1)),
            id if id == fails.to_string() => ExecutionOutcome::Retrying {
                error: "again".into(),
                delay: Duration::ZERO,
            },
            _ => ExecutionOutcome::Dead { error: "no".into() },
        };
        let finishes: Vec<Finish> = claimed
            .iter()
            .map(|t| Finish {
                task: t.clone(),
                outcome: outcome(t),
            })
            .collect();
        let results = queue
            .finish_many(&mut conn, worker, &finishes)
            .await
            .expect("finish");
        assert!(
            results.iter().all(|r| *r == FinishResult::Recorded),
            "{results:?}"
        );

        tokio::time::sleep(Duration::from_millis(5)).await;
        let (promoted, _) = queue.promote_due(&mut conn, 100).await.expect("promote");
        assert_eq!(promoted, 2, "the retry and the scheduled task");
        assert!(
            queue
                .reclaim(&mut conn, worker, dead_after, Duration::from_secs(60), 10)
                .await
                .expect("reclaim")
                .is_empty()
        );
        assert_eq!(
            queue.retry(&mut conn, &dies).await.expect("retry"),
            RetryOutcome::Queued
        );
        for status in [
            Status::Queued,
            Status::Scheduled,
            Status::Running,
            Status::Retrying,
            Status::Dead,
            Status::Succeeded,
            Status::Cancelled,
        ] {
            queue
                .list(
                    &mut conn,
                    &ListQuery {
                        status,
                        priority: None,
                        limit: 10,
                        cursor: None,
                    },
                )
                .await
                .unwrap_or_else(|e| panic!("list {status} in partition {index}: {e}"));
        }
        queue.stats(&mut conn, dead_after).await.expect("stats");
        queue
            .dead_letters(&mut conn, 10)
            .await
            .expect("dead letters");
        queue
            .set_paused(&mut conn, Priority::DEFAULT, true)
            .await
            .expect("pause");
        queue
            .deregister(&mut conn, worker)
            .await
            .expect("deregister");
    }

    // the check is real: an unpartitioned queue's scripts span slots and are refused
    let whole = Partitions::new(
        QueueConfig {
            keys: Keys::new("unpartitioned"),
            ..QueueConfig::default()
        },
        1,
    );
    let queue = &whole.all()[0];
    queue.ensure_groups(&mut conn).await.expect("groups");
    let refused = queue
        .enqueue_in_scope(&mut conn, &task("x"), &scope, None)
        .await
        .expect_err("keys of many slots in one script");
    assert!(
        refused.to_string().to_lowercase().contains("crossslot"),
        "{refused}"
    );
}
