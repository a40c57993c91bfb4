//! A real `redis-server` with its AOF on faultfs, SIGKILLed, then a power loss: with
//! `appendfsync always` every acknowledged key survives, with `appendfsync no` the keys written
//! after the last fsync are gone.

mod common;

use std::time::{Duration, Instant};

use common::Fixture;
use testkit::{Log, Persistence, RedisConfig, RedisServer};

const KEYS: usize = 100;

/// Starts Redis (AOF on, `appendfsync` as given, no snapshots) with its data in the mount.
fn start_redis(fx: &Fixture, appendfsync: &str, log: &std::path::Path) -> RedisServer {
    RedisConfig::new()
        .persistence(Persistence::AofAlways)
        .extra_args(["--appendfsync", appendfsync])
        .log(Log::Append(log.to_path_buf()))
        .start_in(fx.mountpoint())
        .unwrap_or_else(|e| panic!("starting redis-server on faultfs: {e:#}"))
}

fn connect(redis: &RedisServer) -> redis::Connection {
    redis::Client::open(redis.url())
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
        .expect("connecting to redis")
}

/// Waits until no AOF rewrite runs or is scheduled (Redis creates its base file at start).
fn wait_aof_quiet(conn: &mut redis::Connection) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query(conn)
            .expect("INFO");
        if info.contains("aof_rewrite_in_progress:0") && info.contains("aof_rewrite_scheduled:0") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "an AOF rewrite never ended:\n{info}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn set_keys(conn: &mut redis::Connection, keys: std::ops::Range<usize>) {
    for i in keys {
        redis::cmd("SET")
            .arg(format!("key:{i}"))
            .arg(format!("value:{i}"))
            .exec(conn)
            .expect("SET");
    }
}

fn dbsize(redis: &RedisServer) -> usize {
    redis::cmd("DBSIZE")
        .query(&mut connect(redis))
        .expect("DBSIZE")
}

/// What one run saw.
struct Run {
    /// Unsynced bytes when Redis was killed.
    unsynced: u64,
    /// Keys found after the restart.
    survivors: usize,
}

/// Runs Redis on faultfs, writes the keys (with an AOF rewrite halfway when `rewrite`),
/// SIGKILLs it, cuts the power and starts it again.
fn power_loss_run(appendfsync: &str, rewrite: bool) -> Run {
    let logs = tempfile::tempdir().expect("log dir");
    let log = logs.path().join("redis.log");
    let fx = Fixture::mount();
    let control = fx.control();
    // Declared after the fixture: the server is killed before the filesystem is unmounted.
    let mut redis = start_redis(&fx, appendfsync, &log);
    let mut conn = connect(&redis);
    wait_aof_quiet(&mut conn);
    if rewrite {
        // A rewrite: temp-rewriteaof-*.aof, a new base and incr file, the manifest replaced
        // through a temporary file and a rename, the old files deleted.
        set_keys(&mut conn, 0..KEYS / 2);
        redis::cmd("BGREWRITEAOF")
            .exec(&mut conn)
            .expect("BGREWRITEAOF");
        wait_aof_quiet(&mut conn);
        set_keys(&mut conn, KEYS / 2..KEYS);
    } else {
        set_keys(&mut conn, 0..KEYS);
    }
    drop(conn);
    let unsynced = control.unsynced_bytes();

    redis.kill();
    let lost = control.power_loss();
    assert_eq!(lost.bytes, unsynced);
    redis.start_again();
    let survivors = dbsize(&redis);
    println!(
        "appendfsync {appendfsync}: {unsynced} bytes unsynced at the kill; power loss: {lost}; \
         {survivors} of {KEYS} keys survived; the AOF files now:"
    );
    for entry in walk(fx.mountpoint()) {
        println!("  {entry}");
    }
    Run {
        unsynced,
        survivors,
    }
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("readdir") {
        let entry = entry.expect("entry");
        let meta = entry.metadata().expect("stat");
        if meta.is_dir() {
            out.extend(walk(&entry.path()));
        } else {
            out.push(format!("{} ({} bytes)", entry.path().display(), meta.len()));
        }
    }
    out
}

#[test]
fn with_appendfsync_always_every_key_survives_a_power_loss() {
    let run = power_loss_run("always", true);
    assert_eq!(run.unsynced, 0, "every acknowledged write was fsynced");
    assert_eq!(run.survivors, KEYS);
}

#[test]
fn with_appendfsync_no_the_unsynced_keys_are_lost() {
    let run = power_loss_run("no", false);
    assert!(run.unsynced > 0, "Redis wrote its AOF without fsyncing it");
    assert!(
        run.survivors < KEYS,
        "Redis never fsyncs with appendfsync no, yet all {KEYS} keys survived"
    );
}
