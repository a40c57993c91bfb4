//! The `redis-server` launcher ([`RedisConfig`]: everything on its command line) and the fixture
//! built on it ([`RedisServer`]: a running server on a free loopback port).
//!
//! Tests never mock Redis: [`RedisServer::start`] runs a real server with AOF `always` in a
//! fresh data directory, and it can be SIGKILLed and started again on the same port and data;
//! it is killed and its directory removed when dropped. The harness's process runtime builds
//! its Redis command with [`RedisConfig::command`] and supervises it like its other services.
//! Snapshots are off in every mode (`--save ""`), so the AOF alone decides what survives.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use crate::process::{Exit, Log, Process};
use crate::wait::Wait;

/// How long a started server may take to answer `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How Redis persists its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// `appendonly yes`, `appendfsync always`: an acknowledged write survives a crash.
    AofAlways,
    /// `appendonly yes`, `appendfsync everysec`: may lose about the last second.
    AofEverysec,
    /// `appendonly yes`, `appendfsync no`: survives a process crash, not a power loss.
    AofNo,
    /// No AOF, no snapshots: a restart loses everything.
    None,
}

impl Persistence {
    /// The `redis-server` arguments of this mode (`--save ""` comes with every mode).
    pub fn args(self) -> &'static [&'static str] {
        match self {
            Persistence::AofAlways => &["--appendonly", "yes", "--appendfsync", "always"],
            Persistence::AofEverysec => &["--appendonly", "yes", "--appendfsync", "everysec"],
            Persistence::AofNo => &["--appendonly", "yes", "--appendfsync", "no"],
            Persistence::None => &["--appendonly", "no"],
        }
    }
}

/// How to run one `redis-server`: program, persistence, configuration and output.
///
/// The command line is `[config file] --port P --bind 127.0.0.1 --save "" <persistence>
/// <extra args> --dir D`.
#[derive(Clone)]
pub struct RedisConfig {
    program: PathBuf,
    config_file: Option<PathBuf>,
    persistence: Persistence,
    args: Vec<OsString>,
    password: Option<String>,
    log: Log,
}

impl fmt::Debug for RedisConfig {
    // By hand, so the password never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("program", &self.program)
            .field("config_file", &self.config_file)
            .field("persistence", &self.persistence)
            .field("args", &self.args)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("log", &self.log)
            .finish()
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl RedisConfig {
    /// `redis-server` from the `PATH`, AOF `always`, no password, output discarded.
    pub fn new() -> Self {
        Self {
            program: PathBuf::from("redis-server"),
            config_file: None,
            persistence: Persistence::AofAlways,
            args: Vec::new(),
            password: None,
            log: Log::Discard,
        }
    }

    /// Runs this executable instead.
    pub fn program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = program.into();
        self
    }

    /// A configuration file, passed as the first argument (e.g. a `requirepass` kept off the
    /// command line, where `ps` would show it).
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config_file = Some(path.into());
        self
    }

    /// The persistence mode.
    pub fn persistence(mut self, persistence: Persistence) -> Self {
        self.persistence = persistence;
        self
    }

    /// One more argument, after the persistence ones (e.g. `--aclfile`, a path,
    /// `--latency-monitor-threshold`, `1`).
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// More arguments, after the persistence ones.
    pub fn extra_args(mut self, args: impl IntoIterator<Item = impl AsRef<OsStr>>) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// The password of the `default` user, which the server requires (set through
    /// [`RedisConfig::config_file`] or an ACL file): [`RedisServer`] uses it to check that the
    /// server answers and puts it in [`RedisServer::url`].
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Where the server's output goes ([`Log::Append`] keeps the lines of earlier runs).
    pub fn log(mut self, log: Log) -> Self {
        self.log = log;
        self
    }

    fn args(&self, port: u16, dir: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        args.extend(
            self.config_file
                .iter()
                .map(|file| file.clone().into_os_string()),
        );
        let port = port.to_string();
        args.extend(["--port", &port, "--bind", "127.0.0.1", "--save", ""].map(OsString::from));
        args.extend(self.persistence.args().iter().map(OsString::from));
        args.extend(self.args.iter().cloned());
        args.extend([OsString::from("--dir"), dir.as_os_str().to_owned()]);
        args
    }

    /// The command running the server on `port` with its data in `dir`.
    pub fn command(&self, port: u16, dir: &Path) -> Command {
        let mut command = Command::new(&self.program);
        command.args(self.args(port, dir));
        command
    }

    /// [`RedisConfig::command`] as a shell would show it (an empty argument as `''`), for
    /// reports.
    pub fn command_line(&self, port: u16, dir: &Path) -> String {
        std::iter::once(self.program.as_os_str().to_owned())
            .chain(self.args(port, dir))
            .map(|arg| match arg.to_string_lossy() {
                text if text.is_empty() => "''".to_owned(),
                text => text.into_owned(),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Starts a server on a free port with its data in a fresh temporary directory (removed
    /// when the server is dropped); returns once it answers `PING`.
    pub fn start(self) -> anyhow::Result<RedisServer> {
        let dir = tempfile::Builder::new()
            .prefix("testkit-redis-")
            .tempdir()
            .context("creating the redis data directory")?;
        RedisServer::launch(self, DataDir::Temporary(dir))
    }

    /// [`RedisConfig::start`] with the data in `dir` (created if missing, kept afterwards).
    pub fn start_in(self, dir: &Path) -> anyhow::Result<RedisServer> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        RedisServer::launch(self, DataDir::Kept(dir.to_path_buf()))
    }
}

#[derive(Debug)]
enum DataDir {
    Temporary(tempfile::TempDir),
    Kept(PathBuf),
}

impl DataDir {
    fn path(&self) -> &Path {
        match self {
            DataDir::Temporary(dir) => dir.path(),
            DataDir::Kept(dir) => dir,
        }
    }
}

/// A running `redis-server` child process on 127.0.0.1; SIGKILLed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    // Before `dir`: fields drop in order, so the server dies before its directory goes.
    process: Option<Process>,
    config: RedisConfig,
    port: u16,
    dir: DataDir,
}

impl RedisServer {
    /// Starts a server with AOF `always` and waits until it answers.
    ///
    /// # Panics
    /// When `redis-server` cannot start or does not answer within 10 s.
    pub fn start() -> Self {
        Self::start_with(Persistence::AofAlways)
    }

    /// Starts a server with the given persistence and waits until it answers.
    ///
    /// # Panics
    /// As [`RedisServer::start`].
    pub fn start_with(persistence: Persistence) -> Self {
        RedisConfig::new()
            .persistence(persistence)
            .start()
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    fn launch(config: RedisConfig, dir: DataDir) -> anyhow::Result<Self> {
        let mut server = Self {
            process: None,
            config,
            port: crate::port::try_free_port()?,
            dir,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.process.is_none(), "redis-server is already running");
        let mut command = self.config.command(self.port, self.dir.path());
        let process = Process::spawn("redis-server", &mut command, self.config.log.clone())
            .context("is redis-server installed? (apt-get install redis-server)")?;
        self.process = Some(process);
        self.wait_ready()
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        let client = redis::Client::open(self.url()).context("the redis url")?;
        Wait::new(
            format!("redis-server on port {} to answer PING", self.port),
            READY_TIMEOUT,
        )
        .every(Duration::from_millis(20))
        .try_until(|| {
            client
                .get_connection_with_timeout(Duration::from_millis(200))
                .and_then(|mut conn| redis::cmd("PING").query::<String>(&mut conn))
        })
        .map(drop)
    }

    /// `redis://127.0.0.1:{port}`, with the `default` user's password when one was configured.
    pub fn url(&self) -> String {
        match &self.config.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The command line it runs, as a shell would show it.
    pub fn command_line(&self) -> String {
        self.config.command_line(self.port, self.dir.path())
    }

    /// Its log so far, over every start (empty when the output is discarded).
    pub fn log_text(&self) -> String {
        self.config
            .log
            .path()
            .and_then(|path| crate::process::read_log(path).ok())
            .unwrap_or_default()
    }

    /// The running process (`None` after [`RedisServer::kill`] or [`RedisServer::stop`]).
    pub fn process(&self) -> Option<&Process> {
        self.process.as_ref()
    }

    /// SIGKILLs the server (no shutdown, no final fsync) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// SIGTERM (Redis shuts down cleanly), SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) -> anyhow::Result<Exit> {
        match self.process.take() {
            Some(mut process) => process.stop(grace),
            None => Ok(Exit::NotRunning),
        }
    }

    /// Starts the server again on the same port, data directory and log; waits until it
    /// answers.
    ///
    /// # Panics
    /// When it is still running, cannot start, or does not answer within 10 s.
    pub fn start_again(&mut self) {
        self.spawn().unwrap_or_else(|e| panic!("{e:#}"));
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping(url: &str) -> redis::RedisResult<String> {
        redis::Client::open(url)?
            .get_connection_with_timeout(Duration::from_secs(1))
            .and_then(|mut conn| redis::cmd("PING").query(&mut conn))
    }

    fn set_and_get(url: &str, value: Option<&str>) -> Option<String> {
        let mut conn = redis::Client::open(url)
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
            .expect("connection");
        if let Some(value) = value {
            redis::cmd("SET")
                .arg("k")
                .arg(value)
                .exec(&mut conn)
                .expect("SET");
        }
        redis::cmd("GET").arg("k").query(&mut conn).expect("GET")
    }

    #[test]
    fn the_command_line_puts_the_config_file_first_and_the_dir_last() {
        let config = RedisConfig::new()
            .config_file("/run/auth.conf")
            .persistence(Persistence::AofEverysec)
            .arg("--latency-monitor-threshold")
            .arg("1");
        assert_eq!(
            config.command_line(7000, Path::new("/data")),
            "redis-server /run/auth.conf --port 7000 --bind 127.0.0.1 --save '' --appendonly yes \
             --appendfsync everysec --latency-monitor-threshold 1 --dir /data"
        );
    }

    #[test]
    fn a_killed_server_restarts_on_the_same_port_with_its_aof() {
        let mut redis = RedisServer::start();
        let (url, dir) = (redis.url(), redis.dir().to_path_buf());
        set_and_get(&url, Some("kept"));

        redis.kill();
        assert!(ping(&url).is_err(), "killed");
        redis.start_again();

        assert_eq!(redis.url(), url);
        assert_eq!(set_and_get(&url, None).as_deref(), Some("kept"));
        drop(redis);
        assert!(!dir.exists(), "the temporary data directory is removed");
    }

    #[test]
    fn without_persistence_a_restart_loses_everything() {
        let mut redis = RedisServer::start_with(Persistence::None);
        set_and_get(&redis.url(), Some("lost"));
        redis.kill();
        redis.start_again();
        assert_eq!(set_and_get(&redis.url(), None), None);
    }

    #[test]
    fn a_password_is_required_and_used_and_the_log_and_a_kept_dir_stay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("auth.conf");
        std::fs::write(&conf, "requirepass s3cret-pass\n").expect("conf");
        let log = dir.path().join("redis.log");
        let data = dir.path().join("data");
        let mut redis = RedisConfig::new()
            .config_file(&conf)
            .password("s3cret-pass")
            .log(Log::Append(log.clone()))
            .start_in(&data)
            .expect("start");
        assert!(redis.url().starts_with("redis://:s3cret-pass@127.0.0.1:"));
        assert_eq!(ping(&redis.url()).expect("PING"), "PONG");
        let anonymous = format!("redis://127.0.0.1:{}", redis.port());
        assert!(
            ping(&anonymous).is_err(),
            "a client without the password is refused"
        );
        assert!(matches!(
            redis.stop(Duration::from_secs(10)).expect("stop"),
            Exit::Exited(_)
        ));
        drop(redis);
        assert!(data.is_dir(), "a given data directory is kept");
        assert!(
            crate::process::read_log(&log)
                .expect("log")
                .contains("Ready to accept connections"),
            "the server's output is in its log"
        );
    }
}
