//! Test support: a real `redis-server` process on a free loopback port (feature `testing`).
//!
//! Tests never mock Redis. Each [`RedisServer`] runs in its own data directory with AOF on, can
//! be SIGKILLed and started again on the same port and data, and is killed and its directory
//! removed when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How Redis persists its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// `appendonly yes`, `appendfsync always`.
    AofAlways,
    /// `appendonly yes`, `appendfsync everysec`.
    AofEverysec,
    /// No AOF, no snapshots: a restart loses everything.
    None,
}

/// A `redis-server` child process.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    persistence: Persistence,
    child: Option<Child>,
}

/// A free TCP port on 127.0.0.1 (free when asked; a tiny race is accepted in tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("binding 127.0.0.1:0 to find a free port")
}

impl RedisServer {
    /// Starts a server with AOF `always` and waits until it answers.
    pub fn start() -> Self {
        Self::start_with(Persistence::AofAlways)
    }

    /// Starts a server with the given persistence and waits until it answers.
    pub fn start_with(persistence: Persistence) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("taskq-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating the redis data directory");
        let mut server = Self {
            port,
            dir,
            persistence,
            child: None,
        };
        server.start_again();
        server
    }

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// SIGKILLs the server (no shutdown save) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data directory; waits until it answers.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let persistence: &[&str] = match self.persistence {
            Persistence::AofAlways => &["--appendonly", "yes", "--appendfsync", "always"],
            Persistence::AofEverysec => &["--appendonly", "yes", "--appendfsync", "everysec"],
            Persistence::None => &["--appendonly", "no"],
        };
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(persistence)
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server: is it installed? (apt-get install redis-server)");
        self.child = Some(child);
        self.wait_until_ready(Duration::from_secs(10));
    }

    fn wait_until_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let client = redis::Client::open(self.url()).expect("valid url");
        loop {
            let pong = client
                .get_connection_with_timeout(Duration::from_millis(200))
                .and_then(|mut conn| redis::cmd("PING").query::<String>(&mut conn));
            if pong.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer within {within:?}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
