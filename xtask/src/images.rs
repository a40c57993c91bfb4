//! Container images for the three services, built locally with no registry.
//!
//! Each image is `FROM scratch` plus a root filesystem assembled in a temporary directory: the
//! executables, every shared library `ldd` says they load (the dynamic loader included), a
//! minimal `/etc` with a non-root user, and a world-writable `/tmp`. The Redis image takes the
//! host's Debian `redis-server` and `redis-cli`, so its healthcheck `redis-cli ping` runs without
//! a shell; the service images check themselves with `<binary> healthcheck` (exec form).
//!
//! The optional monitoring image `agent-prometheus` ([`ImageName::Prometheus`]) is built the same
//! way from Debian's `prometheus` package (`prometheus`, `promtool` and the web UI's assets). It
//! is not in [`ImageName::ALL`], so `just up` never waits for it; `just monitoring-images` asks
//! for it with `--only prometheus`.
//!
//! Freshness: the sha256 of everything that goes into an image (paths, modes, contents, the
//! Dockerfile) is stored in the image label [`SOURCE_DIGEST_LABEL`]. [`ensure_images`] builds an
//! image only when it is missing or its label differs; [`build_images`] always builds. Both first
//! run `cargo build --release -p orchestrator -p worker` and let cargo decide what is stale.
//!
//! Docker is driven through its CLI rather than the API: the build is a plain `docker build` of
//! a context directory, which works the same with the classic builder (this machine) and BuildKit,
//! and every step can be repeated by hand when something needs a look.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::{self, ErrorKind};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, bail, ensure};
use sha2::{Digest, Sha256};

/// Image label holding the sha256 of the image's inputs; equal label, no rebuild.
pub const SOURCE_DIGEST_LABEL: &str = "agent.source-digest";

/// The tag every image is built with.
pub const TAG: &str = "latest";

/// uid and gid of the non-root user every image runs as.
pub const SERVICE_UID: u32 = 10001;

/// `PATH` inside the images; `redis-server` and `redis-cli` must resolve for compose's exec forms.
const PATH_ENV: &str = "/usr/local/bin:/usr/bin:/bin";

/// Where Debian's prometheus looks for its web assets (`--web.local-assets` default), on the host
/// and in the image.
const PROMETHEUS_WEB_ASSETS: &str = "/usr/share/prometheus/web";

/// One of the images this module builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum ImageName {
    /// `agent-redis`: Debian's redis-server and redis-cli.
    Redis,
    /// `agent-orchestrator`: the HTTP API.
    Orchestrator,
    /// `agent-worker`: the queue consumer.
    Worker,
    /// `agent-prometheus`: Debian's prometheus and promtool, for `compose/monitoring/`.
    Prometheus,
}

impl ImageName {
    /// The images of the system, in start order (monitoring is optional and not among them).
    pub const ALL: [ImageName; 3] = [ImageName::Redis, ImageName::Orchestrator, ImageName::Worker];

    /// Repository name, e.g. `agent-worker`.
    pub fn repository(self) -> &'static str {
        match self {
            ImageName::Redis => "agent-redis",
            ImageName::Orchestrator => "agent-orchestrator",
            ImageName::Worker => "agent-worker",
            ImageName::Prometheus => "agent-prometheus",
        }
    }

    /// Full reference, e.g. `agent-worker:latest`.
    pub fn reference(self) -> String {
        format!("{}:{TAG}", self.repository())
    }

    /// The cargo binary baked into the image, or `None` for the images made of Debian's binaries.
    fn cargo_binary(self) -> Option<&'static str> {
        match self {
            ImageName::Redis | ImageName::Prometheus => None,
            ImageName::Orchestrator => Some("orchestrator"),
            ImageName::Worker => Some("worker"),
        }
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.repository())
    }
}

/// Whether to run `cargo build --release -p orchestrator -p worker` before building images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CargoBuild {
    /// Run cargo; it rebuilds only what changed.
    Release,
    /// Use the release binaries already in the target directory.
    Skip,
}

/// What happens to the debug info of the service binaries copied into the images.
///
/// The release profile keeps line tables (`debug = "line-tables-only"`), which makes a binary
/// about five times larger. Stripping the copy keeps the symbol table, so backtraces still name
/// functions; the unstripped binary stays in `target/release` for offline symbolication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebugInfo {
    /// `strip --strip-debug` the copy (binutils, present wherever rustc links).
    Strip,
    /// Copy the binary as cargo built it.
    Keep,
}

/// What to build and from where.
#[derive(Debug, Clone)]
pub struct ImageOptions {
    /// Workspace root (holds the top-level `Cargo.toml`).
    pub workspace_root: PathBuf,
    /// Images to consider, in order.
    pub images: Vec<ImageName>,
    /// Whether cargo runs first.
    pub cargo_build: CargoBuild,
    /// Whether the service binaries lose their debug info in the image.
    pub debug_info: DebugInfo,
    /// Host `redis-server` copied into `agent-redis` (symlinks are followed).
    pub redis_server: PathBuf,
    /// Host `redis-cli` copied into `agent-redis`.
    pub redis_cli: PathBuf,
    /// Host `prometheus` copied into `agent-prometheus` (Debian package `prometheus`).
    pub prometheus: PathBuf,
    /// Host `promtool` copied into `agent-prometheus` (health check, `promtool check config`).
    pub promtool: PathBuf,
    /// The web UI's templates and static files; Debian's binary serves them from this path.
    pub prometheus_web_assets: PathBuf,
}

impl Default for ImageOptions {
    fn default() -> Self {
        Self {
            workspace_root: default_workspace_root(),
            images: ImageName::ALL.to_vec(),
            cargo_build: CargoBuild::Release,
            debug_info: DebugInfo::Strip,
            redis_server: PathBuf::from("/usr/bin/redis-server"),
            redis_cli: PathBuf::from("/usr/bin/redis-cli"),
            prometheus: PathBuf::from("/usr/bin/prometheus"),
            promtool: PathBuf::from("/usr/bin/promtool"),
            prometheus_web_assets: PathBuf::from(PROMETHEUS_WEB_ASSETS),
        }
    }
}

/// The workspace this crate was compiled in (`harness/..`).
pub fn default_workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// What happened to one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildOutcome {
    /// Built now (it was missing, stale, or a rebuild was forced).
    Built,
    /// The image in the engine already carries the same source digest.
    UpToDate,
}

/// One image as it is in the engine after [`ensure_images`] or [`build_images`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Which image.
    pub name: ImageName,
    /// `repository:tag`.
    pub reference: String,
    /// Engine image id (`sha256:...`).
    pub id: String,
    /// Size as the engine reports it, in bytes.
    pub size_bytes: u64,
    /// Value of the [`SOURCE_DIGEST_LABEL`] label.
    pub source_digest: String,
    /// Built now or already current.
    pub outcome: BuildOutcome,
}

/// The images considered by one call, in the order asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageSet {
    /// One entry per image.
    pub images: Vec<ImageInfo>,
}

impl fmt::Display for ImageSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<28} {:>9}  {:<12} SOURCE DIGEST",
            "IMAGE", "SIZE", "STATUS"
        )?;
        for image in &self.images {
            let status = match image.outcome {
                BuildOutcome::Built => "built",
                BuildOutcome::UpToDate => "up to date",
            };
            writeln!(
                f,
                "{:<28} {:>9}  {:<12} {}",
                image.reference,
                format_megabytes(image.size_bytes),
                status,
                image
                    .source_digest
                    .get(..12)
                    .unwrap_or(&image.source_digest),
            )?;
        }
        Ok(())
    }
}

fn format_megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_000_000.0)
}

/// Builds each image that is missing or whose inputs changed; the cheap call for `just up`.
pub fn ensure_images(opts: &ImageOptions) -> anyhow::Result<ImageSet> {
    build(opts, Rebuild::IfChanged)
}

/// Builds every image even when its source digest is unchanged.
pub fn build_images(opts: &ImageOptions) -> anyhow::Result<ImageSet> {
    build(opts, Rebuild::Always)
}

/// Fails with a message saying what to do when the `docker` CLI or its engine is unavailable.
pub fn require_docker() -> anyhow::Result<()> {
    let output = match Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdin(Stdio::null())
        .output()
    {
        Ok(output) => output,
        Err(err) if err.kind() == ErrorKind::NotFound => bail!(
            "docker is not installed: no `docker` on PATH; install Docker Engine \
             (Debian: apt-get install -y docker.io) or use `just dev` to run the services as local processes"
        ),
        Err(err) => return Err(err).context("running `docker version`"),
    };
    ensure!(
        output.status.success(),
        "the Docker engine is not reachable ({}): is the daemon running, and may this user use its socket?",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// Command-line arguments of `cargo xtask images`.
#[derive(Debug, Clone, clap::Args)]
pub struct ImagesArgs {
    /// Rebuild every image even when its source digest is unchanged.
    #[arg(long)]
    pub force: bool,
    /// Use the release binaries already in the target directory instead of running cargo.
    #[arg(long)]
    pub no_cargo_build: bool,
    /// Keep the debug info (line tables) of the service binaries; images grow about fivefold.
    #[arg(long)]
    pub keep_debug_info: bool,
    /// Build only this image; repeat for several (default: redis, orchestrator and worker;
    /// prometheus only when named).
    #[arg(long = "only", value_enum)]
    pub only: Vec<ImageName>,
    /// Workspace root holding the top-level Cargo.toml.
    #[arg(long, default_value_os_t = default_workspace_root())]
    pub workspace_root: PathBuf,
}

/// Runs `cargo xtask images`: builds what is stale (or everything with `--force`) and prints a table.
pub fn run(args: &ImagesArgs) -> anyhow::Result<()> {
    let opts = ImageOptions {
        workspace_root: args.workspace_root.clone(),
        images: if args.only.is_empty() {
            ImageName::ALL.to_vec()
        } else {
            args.only.clone()
        },
        cargo_build: if args.no_cargo_build {
            CargoBuild::Skip
        } else {
            CargoBuild::Release
        },
        debug_info: if args.keep_debug_info {
            DebugInfo::Keep
        } else {
            DebugInfo::Strip
        },
        ..ImageOptions::default()
    };
    let set = if args.force {
        build_images(&opts)?
    } else {
        ensure_images(&opts)?
    };
    print!("{set}");
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rebuild {
    IfChanged,
    Always,
}

fn build(opts: &ImageOptions, rebuild: Rebuild) -> anyhow::Result<ImageSet> {
    require_docker()?;
    let needs_binaries = opts.images.iter().any(|name| name.cargo_binary().is_some());
    let release_dir = if needs_binaries {
        if opts.cargo_build == CargoBuild::Release {
            cargo_build_release(&opts.workspace_root)?;
        }
        Some(release_dir(&opts.workspace_root)?)
    } else {
        None
    };
    let mut set = ImageSet::default();
    for &name in &opts.images {
        let spec = match name.cargo_binary() {
            None if name == ImageName::Prometheus => ImageSpec::prometheus(opts),
            None => ImageSpec::redis(&opts.redis_server, &opts.redis_cli),
            Some(binary) => {
                // `release_dir` is Some whenever an image with a binary was asked for.
                let dir = release_dir
                    .as_deref()
                    .unwrap_or(Path::new("target/release"));
                ImageSpec::service(name, &dir.join(binary), opts.debug_info)
            }
        };
        let info = ensure_image(&spec, rebuild).with_context(|| format!("building {name}"))?;
        set.images.push(info);
    }
    Ok(set)
}

fn cargo_build_release(workspace_root: &Path) -> anyhow::Result<()> {
    eprintln!("images: cargo build --release -p orchestrator -p worker");
    testkit::cargo_build_release(workspace_root, &["orchestrator", "worker"], false)
}

/// `<target dir>/release`, honouring `CARGO_TARGET_DIR` and `.cargo/config.toml`.
fn release_dir(workspace_root: &Path) -> anyhow::Result<PathBuf> {
    Ok(crate::tools::target_dir(workspace_root)?.join("release"))
}

/// A file copied into the root filesystem.
#[derive(Debug, Clone)]
struct Executable {
    host: PathBuf,
    container: &'static str,
    debug_info: DebugInfo,
}

/// A directory copied into the root filesystem with symlinks resolved (Debian links the web UI's
/// JavaScript libraries from other packages); files become 0644 and directories 0755.
#[derive(Debug, Clone)]
struct Tree {
    host: PathBuf,
    container: &'static str,
    /// Paths relative to `host` left out, with everything under them.
    skip: &'static [&'static str],
}

/// Everything that makes one image.
#[derive(Debug, Clone)]
struct ImageSpec {
    name: ImageName,
    executables: Vec<Executable>,
    trees: Vec<Tree>,
    /// Name of the non-root user (uid [`SERVICE_UID`]).
    user: &'static str,
    /// Directories created owned by the user (e.g. Redis's `/data`, copied into a fresh volume).
    owned_dirs: Vec<&'static str>,
    env: Vec<(&'static str, &'static str)>,
    expose: Vec<u16>,
    workdir: &'static str,
    entrypoint: Vec<&'static str>,
    cmd: Vec<&'static str>,
    healthcheck: Vec<&'static str>,
}

impl ImageSpec {
    fn redis(redis_server: &Path, redis_cli: &Path) -> Self {
        ImageSpec {
            name: ImageName::Redis,
            executables: vec![
                // Debian's redis-server is a symlink to redis-check-rdb; Redis picks its mode
                // from argv[0], so the copy must be named redis-server.
                Executable {
                    host: redis_server.to_path_buf(),
                    container: "/usr/bin/redis-server",
                    debug_info: DebugInfo::Keep,
                },
                Executable {
                    host: redis_cli.to_path_buf(),
                    container: "/usr/bin/redis-cli",
                    debug_info: DebugInfo::Keep,
                },
            ],
            trees: vec![],
            user: "redis",
            owned_dirs: vec!["/data"],
            env: vec![("PATH", PATH_ENV)],
            expose: vec![6379],
            workdir: "/data",
            entrypoint: vec![],
            // The same command compose passes, so a bare `docker run agent-redis` is durable too.
            cmd: vec![
                "redis-server",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                "/data",
                "--protected-mode",
                "no",
                taskq::keys::REDIS_TUNING_ARGS[0],
                taskq::keys::REDIS_TUNING_ARGS[1],
            ],
            healthcheck: vec!["redis-cli", "ping"],
        }
    }

    fn prometheus(opts: &ImageOptions) -> Self {
        let executable = |host: &Path, container| Executable {
            host: host.to_path_buf(),
            container,
            debug_info: DebugInfo::Keep,
        };
        ImageSpec {
            name: ImageName::Prometheus,
            executables: vec![
                executable(&opts.prometheus, "/usr/bin/prometheus"),
                executable(&opts.promtool, "/usr/bin/promtool"),
            ],
            trees: vec![Tree {
                host: opts.prometheus_web_assets.clone(),
                container: PROMETHEUS_WEB_ASSETS,
                // 210 MB of time-zone data the UI never loads (it uses moment-timezone-with-data).
                skip: &["static/moment-timezone/data"],
            }],
            user: "prometheus",
            owned_dirs: vec!["/prometheus"],
            env: vec![("PATH", PATH_ENV)],
            expose: vec![9090],
            workdir: "/prometheus",
            entrypoint: vec!["/usr/bin/prometheus"],
            cmd: vec![
                "--config.file=/etc/prometheus/prometheus.yml",
                "--storage.tsdb.path=/prometheus",
            ],
            // No shell and no curl: an instant query answers once the TSDB is open.
            healthcheck: vec![
                "promtool",
                "query",
                "instant",
                "http://127.0.0.1:9090",
                "vector(1)",
            ],
        }
    }

    fn service(name: ImageName, binary: &Path, debug_info: DebugInfo) -> Self {
        let (container, expose): (&'static str, u16) = match name {
            ImageName::Orchestrator => ("/usr/local/bin/orchestrator", 8000),
            _ => ("/usr/local/bin/worker", 9000),
        };
        ImageSpec {
            name,
            executables: vec![Executable {
                host: binary.to_path_buf(),
                container,
                debug_info,
            }],
            trees: vec![],
            user: "agent",
            owned_dirs: vec![],
            env: vec![("PATH", PATH_ENV), ("LOG_FORMAT", "json")],
            expose: vec![expose],
            workdir: "/tmp",
            entrypoint: vec![container],
            cmd: vec![],
            healthcheck: vec![container, "healthcheck"],
        }
    }

    fn dockerfile(&self) -> String {
        let mut text = String::from("FROM scratch\nCOPY rootfs/ /\n");
        for dir in &self.owned_dirs {
            let dir = dir.trim_start_matches('/');
            text += &format!("COPY --chown={SERVICE_UID}:{SERVICE_UID} owned/{dir}/ /{dir}/\n");
        }
        for (key, value) in &self.env {
            text += &format!("ENV {key}={value}\n");
        }
        for port in &self.expose {
            text += &format!("EXPOSE {port}\n");
        }
        text += &format!("WORKDIR {}\n", self.workdir);
        text += &format!("USER {SERVICE_UID}:{SERVICE_UID}\n");
        text += &format!(
            "HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 CMD {}\n",
            exec_form(&self.healthcheck)
        );
        if !self.entrypoint.is_empty() {
            text += &format!("ENTRYPOINT {}\n", exec_form(&self.entrypoint));
        }
        if !self.cmd.is_empty() {
            text += &format!("CMD {}\n", exec_form(&self.cmd));
        }
        text
    }
}

/// `["a","b"]`: Dockerfile exec form, which needs no shell in the image.
fn exec_form(args: &[&str]) -> String {
    serde_json::to_string(args).unwrap_or_default()
}

fn ensure_image(spec: &ImageSpec, rebuild: Rebuild) -> anyhow::Result<ImageInfo> {
    let context_dir = tempfile::Builder::new()
        .prefix(&format!("{}-context-", spec.name.repository()))
        .tempdir()
        .context("creating a temporary build context")?;
    assemble_context(spec, context_dir.path())?;
    let digest = digest_tree(context_dir.path())?;
    let reference = spec.name.reference();
    let existing = inspect_image(&reference)?;
    if rebuild == Rebuild::IfChanged
        && let Some(existing) = &existing
        && existing.source_digest == digest
    {
        return Ok(existing
            .clone()
            .into_info(spec.name, BuildOutcome::UpToDate));
    }
    eprintln!("images: building {reference}");
    let output = Command::new("docker")
        .arg("build")
        .arg("--quiet")
        .arg("--label")
        .arg(format!("{SOURCE_DIGEST_LABEL}={digest}"))
        .arg("--tag")
        .arg(&reference)
        .arg(context_dir.path())
        .stdin(Stdio::null())
        .output()
        .context("running docker build")?;
    ensure!(
        output.status.success(),
        "docker build of {reference} failed: {}",
        output_text(&output)
    );
    let built = inspect_image(&reference)?
        .with_context(|| format!("{reference} is missing right after docker build"))?;
    ensure!(
        built.source_digest == digest,
        "{reference} was built but carries digest {:?}, expected {digest}",
        built.source_digest
    );
    prune_replaced_images();
    Ok(built.into_info(spec.name, BuildOutcome::Built))
}

/// Removes our images that lost their tag to a rebuild (now or earlier) and that no container
/// uses any more, so rebuilds don't pile up. Only final images carry the digest label, so the
/// intermediate layers of a build running concurrently are never touched.
fn prune_replaced_images() {
    let _ = Command::new("docker")
        .args(["image", "prune", "--force", "--filter"])
        .arg(format!("label={SOURCE_DIGEST_LABEL}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
    .trim()
    .to_string()
}

#[derive(Debug, Clone)]
struct InspectedImage {
    id: String,
    size_bytes: u64,
    source_digest: String,
}

impl InspectedImage {
    fn into_info(self, name: ImageName, outcome: BuildOutcome) -> ImageInfo {
        ImageInfo {
            name,
            reference: name.reference(),
            id: self.id,
            size_bytes: self.size_bytes,
            source_digest: self.source_digest,
            outcome,
        }
    }
}

/// The image as the engine has it, or `None` when there is no such image.
fn inspect_image(reference: &str) -> anyhow::Result<Option<InspectedImage>> {
    let output = Command::new("docker")
        .args(["image", "inspect", reference])
        .stdin(Stdio::null())
        .output()
        .context("running docker image inspect")?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("No such image") || stderr.contains("no such image") {
            return Ok(None);
        }
        bail!("docker image inspect {reference} failed: {}", stderr.trim());
    }
    let parsed: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("parsing docker image inspect")?;
    let image = &parsed[0];
    Ok(Some(InspectedImage {
        id: image["Id"].as_str().unwrap_or_default().to_string(),
        size_bytes: image["Size"].as_u64().unwrap_or_default(),
        source_digest: image["Config"]["Labels"][SOURCE_DIGEST_LABEL]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    }))
}

/// Writes `Dockerfile`, `rootfs/` and `owned/` for `spec` into the empty directory `dir`.
fn assemble_context(spec: &ImageSpec, dir: &Path) -> anyhow::Result<()> {
    let rootfs = dir.join("rootfs");
    make_dir(&rootfs, 0o755)?;
    for executable in &spec.executables {
        let target = rootfs.join(executable.container.trim_start_matches('/'));
        copy_file(&executable.host, &target, 0o755).with_context(|| {
            if executable.host.exists() {
                format!("copying {}", executable.host.display())
            } else if spec.name == ImageName::Redis {
                format!(
                    "{} not found: install Redis on the host (apt-get install -y redis-server) \
                     or set REDIS_IMAGE to an image you have",
                    executable.host.display()
                )
            } else if spec.name == ImageName::Prometheus {
                format!(
                    "{} not found: install Prometheus on the host \
                     (apt-get install -y --no-install-recommends prometheus)",
                    executable.host.display()
                )
            } else {
                format!(
                    "{} not found: did `cargo build --release -p orchestrator -p worker` run?",
                    executable.host.display()
                )
            }
        })?;
        if executable.debug_info == DebugInfo::Strip {
            strip_debug_info(&target)?;
        }
    }
    for tree in &spec.trees {
        let target = rootfs.join(tree.container.trim_start_matches('/'));
        copy_tree(&tree.host, &target, Path::new(""), tree.skip).with_context(|| {
            format!(
                "copying {} (Debian package of the image's binaries installed?)",
                tree.host.display()
            )
        })?;
    }
    let hosts: Vec<&Path> = spec.executables.iter().map(|e| e.host.as_path()).collect();
    for library in shared_libraries(&hosts)? {
        let target = rootfs.join(library.strip_prefix("/").unwrap_or(&library));
        copy_file(&library, &target, 0o755)
            .with_context(|| format!("copying {}", library.display()))?;
    }
    let etc = rootfs.join("etc");
    make_dir(&etc, 0o755)?;
    let user = spec.user;
    let home = spec.owned_dirs.first().copied().unwrap_or("/nonexistent");
    write_file(
        &etc.join("passwd"),
        &format!(
            "root:x:0:0:root:/root:/sbin/nologin\n\
             {user}:x:{SERVICE_UID}:{SERVICE_UID}:{user}:{home}:/sbin/nologin\n"
        ),
    )?;
    write_file(
        &etc.join("group"),
        &format!("root:x:0:\n{user}:x:{SERVICE_UID}:\n"),
    )?;
    // glibc reads this to resolve `agent-redis`; without it the default order is dns first.
    write_file(&etc.join("nsswitch.conf"), "hosts: files dns\n")?;
    make_dir(&rootfs.join("tmp"), 0o1777)?;
    let owned = dir.join("owned");
    make_dir(&owned, 0o755)?;
    for owned_dir in &spec.owned_dirs {
        make_dir(&owned.join(owned_dir.trim_start_matches('/')), 0o755)?;
    }
    write_file(&dir.join("Dockerfile"), &spec.dockerfile())?;
    Ok(())
}

/// `strip --strip-debug` in place; deterministic, so the digest stays stable across runs.
fn strip_debug_info(binary: &Path) -> anyhow::Result<()> {
    let output = Command::new("strip")
        .arg("--strip-debug")
        .arg(binary)
        .stdin(Stdio::null())
        .output()
        .context("running strip (Debian package binutils; or pass --keep-debug-info)")?;
    ensure!(
        output.status.success(),
        "strip --strip-debug {} failed: {}",
        binary.display(),
        output_text(&output)
    );
    Ok(())
}

fn make_dir(path: &Path, mode: u32) -> anyhow::Result<()> {
    fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    // Explicit modes keep the digest independent of the umask.
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

fn copy_file(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    if let Some(parent) = to.parent() {
        make_dir(parent, 0o755)?;
    }
    fs::copy(from, to)?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Copies `from` (a directory) to `to`, following symlinks, leaving out `skip` (paths relative
/// to the tree's root; `relative` is where `from` sits in it).
fn copy_tree(from: &Path, to: &Path, relative: &Path, skip: &[&str]) -> anyhow::Result<()> {
    make_dir(to, 0o755)?;
    let mut entries = fs::read_dir(from)
        .with_context(|| format!("reading {}", from.display()))?
        .collect::<io::Result<Vec<_>>>()?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let relative = relative.join(entry.file_name());
        if skip.iter().any(|s| relative == Path::new(s)) {
            continue;
        }
        let source = entry.path();
        // fs::metadata follows symlinks: a link to a directory is copied as that directory.
        let metadata =
            fs::metadata(&source).with_context(|| format!("resolving {}", source.display()))?;
        let target = to.join(entry.file_name());
        if metadata.is_dir() {
            copy_tree(&source, &target, &relative, skip)?;
        } else {
            copy_file(&source, &target, 0o644)
                .with_context(|| format!("copying {}", source.display()))?;
        }
    }
    Ok(())
}

fn write_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

/// The absolute paths of every shared library (and the loader) the executables load.
fn shared_libraries(executables: &[&Path]) -> anyhow::Result<BTreeSet<PathBuf>> {
    let mut libraries = BTreeSet::new();
    for executable in executables {
        let output = Command::new("ldd")
            .arg(executable)
            .stdin(Stdio::null())
            .output()
            .context("running ldd (Debian package libc-bin)")?;
        let text = output_text(&output);
        if text.contains("not a dynamic executable") || text.contains("statically linked") {
            continue;
        }
        ensure!(
            output.status.success(),
            "ldd {} failed: {text}",
            executable.display()
        );
        let parsed = parse_ldd_output(&String::from_utf8_lossy(&output.stdout))
            .with_context(|| format!("resolving the libraries of {}", executable.display()))?;
        libraries.extend(parsed);
    }
    Ok(libraries)
}

/// Library paths from `ldd` output; the vDSO has no file and is skipped.
fn parse_ldd_output(text: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut libraries = Vec::new();
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
        let path = match line.split_once("=>") {
            Some((name, target)) => {
                let target = target.trim();
                ensure!(
                    !target.starts_with("not found"),
                    "shared library {} not found",
                    name.trim()
                );
                target.split_whitespace().next().unwrap_or_default()
            }
            None => line.split_whitespace().next().unwrap_or_default(),
        };
        if path.starts_with('/') {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

/// sha256 over every entry under `root`: relative path, kind, permission bits and contents.
fn digest_tree(root: &Path) -> anyhow::Result<String> {
    let mut hasher = Sha256::new();
    hash_dir(root, root, &mut hasher)
        .with_context(|| format!("hashing the build context {}", root.display()))?;
    Ok(hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect())
}

fn hash_dir(root: &Path, dir: &Path, hasher: &mut Sha256) -> io::Result<()> {
    let mut entries = fs::read_dir(dir)?.collect::<io::Result<Vec<_>>>()?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let path = entry.path();
        let metadata = fs::symlink_metadata(&path)?;
        let relative = path.strip_prefix(root).unwrap_or(&path);
        hasher.update(relative.as_os_str().as_encoded_bytes());
        hasher.update([0]);
        hasher.update((metadata.permissions().mode() & 0o7777).to_le_bytes());
        if metadata.is_dir() {
            hasher.update(b"d");
            hash_dir(root, &path, hasher)?;
        } else if metadata.is_symlink() {
            hasher.update(b"l");
            hasher.update(fs::read_link(&path)?.as_os_str().as_encoded_bytes());
        } else {
            hasher.update(b"f");
            hasher.update(metadata.len().to_le_bytes());
            let mut file = fs::File::open(&path)?;
            io::copy(&mut file, hasher)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LDD_REDIS: &str = "\
\tlinux-vdso.so.1 (0x00007fc06af97000)
\tlibatomic.so.1 => /lib/x86_64-linux-gnu/libatomic.so.1 (0x00007fc06af7c000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007fc06a01e000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007fc06af99000)
";

    #[test]
    fn ldd_output_yields_libraries_and_the_loader_but_not_the_vdso() {
        let libraries = parse_ldd_output(LDD_REDIS).expect("valid ldd output");
        assert_eq!(
            libraries,
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libatomic.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn a_missing_library_is_an_error_naming_it() {
        let error = parse_ldd_output("\tlibfoo.so.1 => not found\n")
            .expect_err("a missing library must fail");
        assert!(error.to_string().contains("libfoo.so.1"), "{error}");
    }

    #[test]
    fn service_dockerfile_runs_as_non_root_with_an_exec_form_healthcheck() {
        let spec = ImageSpec::service(
            ImageName::Worker,
            Path::new("/nonexistent/worker"),
            DebugInfo::Keep,
        );
        let dockerfile = spec.dockerfile();
        assert!(dockerfile.starts_with("FROM scratch\n"), "{dockerfile}");
        assert!(
            dockerfile.contains(r#"CMD ["/usr/local/bin/worker","healthcheck"]"#),
            "{dockerfile}"
        );
        assert!(dockerfile.contains("USER 10001:10001"), "{dockerfile}");
        assert!(
            dockerfile.contains(r#"ENTRYPOINT ["/usr/local/bin/worker"]"#),
            "{dockerfile}"
        );
    }

    #[test]
    fn redis_dockerfile_gives_data_to_the_redis_user() {
        let spec = ImageSpec::redis(Path::new("/a"), Path::new("/b"));
        let dockerfile = spec.dockerfile();
        assert!(
            dockerfile.contains("COPY --chown=10001:10001 owned/data/ /data/"),
            "{dockerfile}"
        );
        assert!(
            dockerfile.contains(r#"CMD ["redis-cli","ping"]"#),
            "{dockerfile}"
        );
    }

    #[test]
    fn prometheus_image_is_optional_and_keeps_its_data_in_a_volume_owned_by_the_user() {
        assert!(
            !ImageName::ALL.contains(&ImageName::Prometheus),
            "`just up` must not build the monitoring image"
        );
        let spec = ImageSpec::prometheus(&ImageOptions::default());
        let dockerfile = spec.dockerfile();
        assert!(
            dockerfile.contains("COPY --chown=10001:10001 owned/prometheus/ /prometheus/"),
            "{dockerfile}"
        );
        assert!(
            dockerfile.contains(r#"ENTRYPOINT ["/usr/bin/prometheus"]"#),
            "{dockerfile}"
        );
        assert!(
            dockerfile.contains(r#"CMD ["promtool","query","instant""#),
            "exec-form health check without a shell: {dockerfile}"
        );
        assert!(dockerfile.contains("USER 10001:10001"), "{dockerfile}");
    }

    #[test]
    fn copied_trees_follow_symlinks_and_leave_out_skipped_paths() {
        let source = tempfile::tempdir().expect("tempdir");
        let elsewhere = tempfile::tempdir().expect("tempdir");
        write_file(&elsewhere.path().join("lib.js"), "js").expect("write");
        fs::create_dir_all(source.path().join("static/tz/data")).expect("mkdir");
        write_file(&source.path().join("static/tz/data/huge.json"), "{}").expect("write");
        write_file(&source.path().join("static/tz/tz.min.js"), "tz").expect("write");
        std::os::unix::fs::symlink(elsewhere.path(), source.path().join("static/linked"))
            .expect("symlink");
        let target = tempfile::tempdir().expect("tempdir");

        copy_tree(
            source.path(),
            &target.path().join("web"),
            Path::new(""),
            &["static/tz/data"],
        )
        .expect("copy");

        let web = target.path().join("web");
        assert_eq!(
            fs::read_to_string(web.join("static/linked/lib.js")).expect("linked file copied"),
            "js"
        );
        assert!(
            !fs::symlink_metadata(web.join("static/linked"))
                .expect("copied")
                .is_symlink(),
            "the link must become a directory"
        );
        assert!(web.join("static/tz/tz.min.js").is_file());
        assert!(
            !web.join("static/tz/data").exists(),
            "skipped paths stay out"
        );
    }

    #[test]
    fn assembled_context_holds_binary_loader_user_and_sticky_tmp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = ImageSpec::service(
            ImageName::Orchestrator,
            Path::new("/usr/bin/env"),
            DebugInfo::Strip,
        );

        assemble_context(&spec, dir.path()).expect("assembling from /usr/bin/env");

        let rootfs = dir.path().join("rootfs");
        assert!(rootfs.join("usr/local/bin/orchestrator").is_file());
        assert!(
            rootfs.join("lib64/ld-linux-x86-64.so.2").is_file(),
            "the dynamic loader must be copied"
        );
        let passwd = fs::read_to_string(rootfs.join("etc/passwd")).expect("passwd");
        assert!(passwd.contains("agent:x:10001:10001"), "{passwd}");
        let tmp_mode = fs::metadata(rootfs.join("tmp"))
            .expect("tmp")
            .permissions()
            .mode();
        assert_eq!(tmp_mode & 0o7777, 0o1777);
    }

    #[test]
    fn digest_changes_with_content_and_mode_but_not_with_assembly_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("bin");
        write_file(&file, "one").expect("write");
        let first = digest_tree(dir.path()).expect("digest");
        write_file(&file, "one").expect("rewrite");
        assert_eq!(
            first,
            digest_tree(dir.path()).expect("digest"),
            "same inputs"
        );

        write_file(&file, "two").expect("write");
        let second = digest_tree(dir.path()).expect("digest");
        assert_ne!(first, second, "content change");

        fs::set_permissions(&file, fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_ne!(
            second,
            digest_tree(dir.path()).expect("digest"),
            "mode change"
        );
    }
}
