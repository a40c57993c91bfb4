//! Test support of Agent System: what the tests, the harness and the benchmark share to run
//! real processes on this machine.
//!
//! - [`process`]: the one child-process supervisor ([`Process`]): a log file, SIGTERM-then-SIGKILL
//!   with a grace, SIGSTOP/SIGCONT, killed on drop, CPU seconds and peak RSS from `/proc`.
//! - [`redis`]: the one `redis-server` launcher ([`RedisConfig`]) and the fixture built on it
//!   ([`RedisServer`]): a free loopback port, AOF `always`/`everysec` or none, a password or an
//!   ACL file, extra arguments, SIGKILL and restart on the same port and data.
//! - [`port`]: a free port on 127.0.0.1 ([`free_port`]).
//! - [`wait`]: [`wait_for`], [`assert_eventually`] and their async twins: poll until a probe
//!   succeeds, fail naming what was awaited and what was last seen.
//! - [`cargo`]: [`cargo_build_release`], the release build of the service binaries.
//!
//! Who may depend on it: the production crates (`taskq`, `orchestrator`, `worker`) only as a
//! `[dev-dependency]`, for their tests and benches. The harness and xtask are tools whose real
//! work is supervising processes (the harness's process runtime, the benchmark run), so they
//! depend on it normally. testkit itself depends on no crate of the workspace.

pub mod cargo;
pub mod cluster;
pub mod port;
pub mod process;
pub mod redis;
pub mod wait;

pub use self::redis::{Persistence, RedisConfig, RedisServer};
pub use cargo::cargo_build_release;
pub use cluster::RedisCluster;
pub use port::{free_port, try_free_port};
pub use process::{Exit, Log, Process};
pub use wait::{Wait, assert_eventually, assert_eventually_async, wait_for, wait_for_async};
