//! `cargo xtask <command>`: packaging and developer chores; the justfile's recipes call these.
//!
//! ```text
//! cargo xtask images [--force] [--only worker]     # build the container images when stale
//! cargo xtask up [WORKERS]                         # the compose deployment, waited for (just up)
//! cargo xtask restart|upgrade SERVICE, scale N, logs [SERVICE], ps, network, monitoring-up
//! cargo xtask redis-secrets [--dir DIR]            # passwords, env files, ACL file (just _redis-secrets)
//! cargo xtask redis-rotate-password                # new password for the Redis user agent
//! cargo xtask k8s-secrets | k8s-apply              # the Kubernetes Secret, the manifests
//! cargo xtask run | dev                            # the services as local processes
//! cargo xtask require docker|redis-server|prometheus|bench
//! cargo xtask bench [--phases drain] ...           # benchmark a local system (just bench)
//! cargo xtask bare-enqueue REDIS_URL LISTEN_ADDR   # the bench-only minimal enqueue server
//! cargo xtask bare-consume REDIS_URL PREFIX NAME   # the bench-only bare batched consumer
//! cargo xtask redis-cost                           # Redis's instructions per drained task (callgrind)
//! ```

mod perf;

/// The orchestrator's allocator (mimalloc), so the bench's bare server, which runs from this
/// binary, is read against the same allocator as the orchestrator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use xtask::compose::{self, Deployment, Service};
use xtask::secrets::SecretsDir;
use xtask::tools::{self, Tool};

#[derive(Parser)]
#[command(
    name = "xtask",
    about = "Packaging and developer chores of Agent System"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the container images agent-redis, agent-orchestrator, agent-worker when stale
    /// (only the orchestrator and the worker when REDIS_IMAGE names another Redis image).
    Images(xtask::images::ImagesArgs),
    /// Start redis → orchestrator → WORKERS workers in containers, wait until healthy, print them.
    Up {
        /// Worker replicas.
        #[arg(default_value_t = 1)]
        workers: usize,
    },
    /// Restart one service (redis | orchestrator | worker) in place and wait until it is healthy.
    Restart {
        /// redis, orchestrator or worker.
        service: Service,
    },
    /// Rebuild stale images and recreate one service if its image changed.
    Upgrade {
        /// redis, orchestrator or worker.
        service: Service,
    },
    /// Run N worker containers.
    Scale {
        /// Worker replicas.
        n: usize,
    },
    /// Follow the logs of one service, or of all three.
    Logs {
        /// redis, orchestrator or worker; all three when omitted.
        service: Option<Service>,
    },
    /// Show the service containers with their health and published ports.
    Ps,
    /// Create the external network agent-system-net if it does not exist.
    Network,
    /// Start Prometheus on agent-system-net and wait until it is healthy.
    MonitoringUp,
    /// Create the Redis passwords when missing and derive the env files and the ACL file.
    RedisSecrets {
        /// The secrets directory (default: compose/secrets of the workspace).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Rotate the password of the Redis user `agent` with no failed Redis call.
    RedisRotatePassword,
    /// Create the Kubernetes Secret agent-system/agent-redis unless it exists.
    K8sSecrets,
    /// Apply k8s/ to the current kubectl context, creating the Secret first.
    K8sApply,
    /// Run redis-server, the orchestrator and a worker (release builds) as local processes.
    Run,
    /// Like `run` with debug builds rebuilt and restarted on every edit (cargo-watch).
    Dev,
    /// Fail (or install, when root) unless a tool the chores need is there.
    Require {
        /// What to check.
        #[arg(value_enum)]
        tool: Tool,
    },
    /// Benchmark a local system and write docs/benchmarks.md and .json (`just bench`; run it
    /// from a release build: `cargo run --release -p xtask -- bench`).
    Bench(Box<perf::Options>),
    /// Redis's instructions per drained no-op task, workers against the bare consumer, counted
    /// by valgrind's callgrind (needs valgrind; a few minutes).
    RedisCost(perf::instructions::CostOptions),
    /// The bench-only minimal enqueue server the benchmark measures as a ceiling.
    BareEnqueue {
        /// `redis://host:port` of the Redis to enqueue into.
        redis_url: String,
        /// Address to listen on, e.g. `127.0.0.1:8100`.
        listen_addr: String,
        /// Threads of its async runtime: by default the orchestrator's default (one per core);
        /// the bench passes the orchestrator's `ORCHESTRATOR_THREADS` when it sets one, so the
        /// two are measured alike.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
        threads: Option<u16>,
    },
    /// The bench-only bare batched consumer the benchmark reads drains against: drains the
    /// queue under PREFIX as CONSUMER until a read finds nothing, prints how many it finished.
    BareConsume {
        /// `redis://host:port` of the Redis to drain.
        redis_url: String,
        /// Key prefix of the queue.
        prefix: String,
        /// Consumer name in the group.
        consumer: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let deployment = Deployment::default();
    let root = deployment.root().to_path_buf();
    let result = match cli.command {
        Command::Images(args) => deployment.images(args),
        Command::Up { workers } => deployment.up(workers),
        Command::Restart { service } => deployment.restart(service),
        Command::Upgrade { service } => deployment.upgrade(service),
        Command::Scale { n } => deployment.scale(n),
        Command::Logs { service } => deployment.logs(service),
        Command::Ps => tools::require_docker().and_then(|()| compose::ps()),
        Command::Network => tools::require_docker().and_then(|()| compose::ensure_network()),
        Command::MonitoringUp => deployment.monitoring_up(),
        Command::RedisSecrets { dir } => match dir {
            Some(dir) => deployment.render_secrets_in(&SecretsDir::new(dir)),
            None => deployment.render_secrets().map(|_topology| ()),
        },
        Command::RedisRotatePassword => deployment.rotate_redis_password(),
        Command::K8sSecrets => xtask::k8s::create_secret(&root),
        Command::K8sApply => xtask::k8s::apply(&root),
        Command::Run => xtask::local::run(&root),
        Command::Dev => xtask::local::dev(&root),
        Command::Require { tool } => tools::require(tool),
        Command::Bench(options) => bench(&root, *options),
        Command::RedisCost(options) => redis_cost(&root, options),
        Command::BareEnqueue {
            redis_url,
            listen_addr,
            threads,
        } => bare_enqueue(&redis_url, &listen_addr, threads),
        Command::BareConsume {
            redis_url,
            prefix,
            consumer,
        } => bare_consume(&redis_url, &prefix, &consumer),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The tools the benchmark drives, release builds of everything it starts, then the run.
fn bench(root: &Path, mut options: perf::Options) -> anyhow::Result<()> {
    tools::require_bench_tools()?;
    tools::cargo_build(root, true, &["orchestrator", "worker", "xtask"])?;
    // The default names cargo's usual target directory; resolve it (CARGO_TARGET_DIR and
    // .cargo/config.toml may move it), as the bare-enqueue and service binaries are there.
    if options.bin_dir == Path::new("target/release") {
        options.bin_dir = tools::target_dir(root)?.join("release");
    }
    perf::bench(&options)
}

/// Release builds (the worker, this tool for `bare-consume`; the orchestrator too, as the bench's
/// binary directory holds all three), then the two counted drains.
fn redis_cost(root: &Path, mut options: perf::instructions::CostOptions) -> anyhow::Result<()> {
    tools::require_redis_server()?;
    anyhow::ensure!(
        tools::find_on_path("valgrind").is_some()
            && tools::find_on_path("callgrind_control").is_some(),
        "valgrind is missing (Debian: apt-get install -y valgrind)"
    );
    tools::cargo_build(root, true, &["orchestrator", "worker", "xtask"])?;
    if options.bin_dir == Path::new("target/release") {
        options.bin_dir = tools::target_dir(root)?.join("release");
    }
    let runtime = taskq::support::runtime(Some(2)).context("starting the tokio runtime")?;
    runtime.block_on(perf::instructions::run(&options))
}

fn bare_consume(redis_url: &str, prefix: &str, consumer: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let finished = runtime.block_on(perf::bare_consumer::drain(redis_url, prefix, consumer))?;
    // Its own CPU time, for the bench's per-task figures (an exited process has none to read).
    let cpu_s = testkit::process::cpu_seconds(std::process::id()).unwrap_or(0.0);
    println!("{finished} {cpu_s}");
    Ok(())
}

fn bare_enqueue(redis_url: &str, listen_addr: &str, threads: Option<u16>) -> anyhow::Result<()> {
    // The same runtime as the orchestrator's with as many threads.
    let runtime = taskq::support::runtime(threads).context("starting the tokio runtime")?;
    runtime.block_on(async {
        let app = perf::bare::app(redis_url)
            .await
            .with_context(|| format!("connecting to {redis_url}"))?;
        let listener = tokio::net::TcpListener::bind(listen_addr)
            .await
            .with_context(|| format!("listening on {listen_addr}"))?;
        axum::serve(listener, app).await.context("serving")
    })
}
