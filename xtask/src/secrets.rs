//! The Redis passwords of the deployment and everything derived from them.
//!
//! [`render`] is what `just up` (every compose recipe, through `_redis-secrets`) runs: it
//! creates each password once (32 random bytes in hex: nothing to escape in a URL or an env
//! file) and derives the other files from them on every run:
//!
//! | file in the secrets directory (mode 0700) | mode | content |
//! |---|---|---|
//! | `redis-admin-password`, `redis-agent-password` | 0600 | the passwords |
//! | `redis-agent-password.previous` | 0600 | the old agent password, while a rotation runs |
//! | `redis.env` | 0600 | `REDISCLI_AUTH=<admin password>` |
//! | `services.env` | 0600 | `REDIS_URL=redis://agent:<password>@agent-redis:6379`, or on a Redis Cluster `REDIS_CLUSTER_URLS` (every node), `QUEUE_PARTITIONS`, `REPLICA_ACKS` ([`RedisTopology`]) |
//! | `redis-cluster.conf` | 0644 | `masterauth <admin password>`: how a cluster replica authenticates to its primary (mounted into the nodes, whose user 10001 reads it; the directory keeps others out) |
//! | `redis-acl/users.acl` (directory 0755) | 0644 | the template's `user` lines, `#<sha256>` per password |
//!
//! [`rotate_agent_password`] gives the user `agent` a new password with no failed Redis call;
//! the Docker side is behind [`RotationTarget`]. [`k8s_secret_files`] renders the same files
//! for the Kubernetes Secret. Nothing here prints a password or puts one on a command line.

use std::fmt;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use rand::TryRngCore;
use sha2::{Digest, Sha256};

/// The secrets directory of the compose deployment, relative to the workspace root (git-ignored).
pub const SECRETS_DIR: &str = "compose/secrets";

/// The template of Redis's ACL file, relative to the workspace root.
pub const ACL_TEMPLATE: &str = "compose/redis-users.acl.template";

/// Replaced by `#<sha256>` of the admin password (the Redis user `default`).
pub const ADMIN_PLACEHOLDER: &str = "@ADMIN_PASSWORD_HASHES@";

/// Replaced by `#<sha256>` of each valid password of the user `agent` (two during a rotation).
pub const AGENT_PLACEHOLDER: &str = "@AGENT_PASSWORD_HASHES@";

/// The Redis user of the orchestrator, the workers and KEDA.
pub const AGENT_USER: &str = "agent";

/// Where the services reach Redis, in compose and in Kubernetes alike.
pub const REDIS_HOST: &str = "agent-redis:6379";

/// Bytes of randomness in a password (written as twice as many hex digits).
pub const PASSWORD_BYTES: usize = 32;

/// The Kubernetes Secret holding the Redis credentials.
pub const K8S_SECRET: &str = "agent-redis";

/// The namespace of the Kubernetes deployment.
pub const K8S_NAMESPACE: &str = "agent-system";

/// A Redis password owner; names the password file `redis-<name>-password`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum User {
    /// The Redis user `default`: `redis-cli` in the container, operators.
    Admin,
    /// The Redis user `agent`: the orchestrator, the workers, KEDA.
    Agent,
}

impl User {
    /// Both, in the order their passwords are created.
    pub const ALL: [User; 2] = [User::Admin, User::Agent];

    /// `admin` or `agent`.
    pub fn name(self) -> &'static str {
        match self {
            User::Admin => "admin",
            User::Agent => "agent",
        }
    }
}

impl fmt::Display for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the services reach Redis: what `services.env` (and the Kubernetes Secret) tell them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTopology {
    /// One Redis at [`REDIS_HOST`]: `REDIS_URL`.
    Single,
    /// A Redis Cluster: `REDIS_CLUSTER_URLS` names every node (`host:port`), the queue has one
    /// partition per shard (`QUEUE_PARTITIONS`), and every state change the API answers waits
    /// for one replica (`REPLICA_ACKS=1`), so a failover loses no acknowledged task.
    Cluster {
        /// `host:port` of every node, primaries and replicas.
        nodes: Vec<String>,
        /// Primaries (shards) of the cluster.
        shards: u32,
    },
}

impl RedisTopology {
    /// The variables of `services.env` for the services' user with `agent_password`.
    pub fn services_env(&self, agent_password: &str) -> String {
        match self {
            RedisTopology::Single => format!("REDIS_URL={}\n", services_redis_url(agent_password)),
            RedisTopology::Cluster { shards, .. } => format!(
                "REDIS_CLUSTER_URLS={}\nQUEUE_PARTITIONS={shards}\nREPLICA_ACKS=1\n",
                self.cluster_urls(agent_password)
            ),
        }
    }

    /// `REDIS_CLUSTER_URLS`: a `redis://agent:<password>@host:port` per node, comma-separated
    /// (empty for a single Redis).
    pub fn cluster_urls(&self, agent_password: &str) -> String {
        match self {
            RedisTopology::Single => String::new(),
            RedisTopology::Cluster { nodes, .. } => nodes
                .iter()
                .map(|node| format!("redis://{AGENT_USER}:{agent_password}@{node}"))
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

/// The paths of one secrets directory (`compose/secrets`, or a temporary one for Kubernetes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretsDir {
    root: PathBuf,
}

impl SecretsDir {
    /// The secrets directory at `root` (created by [`render`] when missing).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `compose/secrets` of the workspace at `workspace_root`.
    pub fn compose(workspace_root: &Path) -> Self {
        Self::new(workspace_root.join(SECRETS_DIR))
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// `redis-<user>-password`.
    pub fn password_file(&self, user: User) -> PathBuf {
        self.root.join(format!("redis-{user}-password"))
    }

    /// `redis-agent-password.previous`: the agent password being replaced, during a rotation.
    pub fn previous_agent_password_file(&self) -> PathBuf {
        self.root.join("redis-agent-password.previous")
    }

    /// `redis-acl/`, mounted read-only into `agent-redis` at `/etc/redis/acl`.
    pub fn acl_dir(&self) -> PathBuf {
        self.root.join("redis-acl")
    }

    /// `redis-acl/users.acl`, Redis's `--aclfile`.
    pub fn acl_file(&self) -> PathBuf {
        self.acl_dir().join("users.acl")
    }

    /// `redis.env`: compose's env file of `agent-redis` (`REDISCLI_AUTH`).
    pub fn redis_env(&self) -> PathBuf {
        self.root.join("redis.env")
    }

    /// `services.env`: compose's env file of the orchestrator and the workers (`REDIS_URL`).
    pub fn services_env(&self) -> PathBuf {
        self.root.join("services.env")
    }

    /// `redis-cluster.conf`: the Redis Cluster nodes' config file (`masterauth`).
    pub fn cluster_conf(&self) -> PathBuf {
        self.root.join("redis-cluster.conf")
    }

    /// The password of `user` as the env files take it: the first line, blanks trimmed.
    pub fn password(&self, user: User) -> anyhow::Result<String> {
        let path = self.password_file(user);
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", shown(&path)))?;
        Ok(first_line(&text).to_owned())
    }
}

/// A new password: [`PASSWORD_BYTES`] bytes from the operating system's generator, in lowercase hex.
pub fn new_password() -> anyhow::Result<String> {
    let mut bytes = [0u8; PASSWORD_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .context("reading random bytes from the operating system")?;
    Ok(hex(&bytes))
}

/// The lowercase hex sha256 of `text`.
pub fn sha256_hex(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

/// How Redis's ACL names a password: `#<sha256 hex>` of the password (newlines removed, as
/// the password files may end with one).
pub fn password_hash(password: &str) -> String {
    format!("#{}", sha256_hex(&password.replace('\n', "")))
}

/// `redis://agent:<password>@agent-redis:6379`: the services' `REDIS_URL` in both deployments.
pub fn services_redis_url(agent_password: &str) -> String {
    format!("redis://{AGENT_USER}:{agent_password}@{REDIS_HOST}")
}

/// Redis's ACL file from the template: its `user` lines (the format allows no comments or blank
/// lines), the placeholders replaced by the space-separated hashes.
pub fn render_acl(template: &str, admin_hashes: &[String], agent_hashes: &[String]) -> String {
    let (admin, agent) = (admin_hashes.join(" "), agent_hashes.join(" "));
    template
        .lines()
        .filter(|line| line.starts_with("user "))
        .map(|line| {
            line.replacen(ADMIN_PLACEHOLDER, &admin, 1)
                .replacen(AGENT_PLACEHOLDER, &agent, 1)
                + "\n"
        })
        .collect()
}

/// What one [`render`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The users whose password was created now.
    pub created: Vec<User>,
    /// The ACL file was written (new or different content).
    pub acl_changed: bool,
    /// `redis.env` was written (new or different content); compose then recreates `agent-redis`.
    pub redis_env_changed: bool,
    /// Where the ACL file is.
    pub acl_file: PathBuf,
}

impl Rendered {
    /// The hint for a running `agent-redis` that would keep its old users: the ACL file changed
    /// and nothing makes compose recreate the container. `None` when there is nothing to say.
    pub fn restart_hint(&self) -> Option<String> {
        (self.acl_changed && !self.redis_env_changed).then(|| {
            format!(
                "note: {} changed; agent-redis reads it when it starts: just restart redis",
                shown(&self.acl_file)
            )
        })
    }
}

/// Creates the passwords that are missing and derives the env files, the ACL file and the
/// cluster nodes' config from them; `services.env` points the services at `topology`.
/// Writes only what changed; prints (to `out`) which password it created, never a password.
pub fn render(
    dir: &SecretsDir,
    template: &Path,
    topology: &RedisTopology,
    out: &mut dyn Write,
) -> anyhow::Result<Rendered> {
    let template_text = fs::read_to_string(template)
        .with_context(|| format!("reading the ACL template {}", shown(template)))?;

    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir.acl_dir())
        .with_context(|| format!("creating {}", shown(&dir.acl_dir())))?;
    set_mode(dir.path(), 0o700)?;
    // Mounted into agent-redis, whose redis user (uid 10001) reads it.
    set_mode(&dir.acl_dir(), 0o755)?;

    let mut created = Vec::new();
    for user in User::ALL {
        let file = dir.password_file(user);
        if !non_empty(&file)? {
            write_private(&file, &new_password()?)?;
            writeln!(out, "created the Redis {user} password in {}", shown(&file))?;
            created.push(user);
        }
    }

    let admin = hashes(&[dir.password_file(User::Admin)])?;
    let agent = hashes(&[
        dir.password_file(User::Agent),
        dir.previous_agent_password_file(),
    ])?;
    let acl = render_acl(&template_text, &admin, &agent);
    ensure!(
        acl.contains(&format!("user default on {}", admin.join(" ")))
            && acl.contains(&format!("user {AGENT_USER} on {}", agent.join(" "))),
        "{} must define the users default and {AGENT_USER} with the placeholders \
         {ADMIN_PLACEHOLDER} and {AGENT_PLACEHOLDER}",
        shown(template)
    );
    let acl_file = dir.acl_file();
    let acl_changed = read_optional(&acl_file)?.as_deref() != Some(acl.as_str());
    if acl_changed {
        let new = acl_file.with_extension("acl.new");
        fs::write(&new, &acl).with_context(|| format!("writing {}", shown(&new)))?;
        set_mode(&new, 0o644)?;
        fs::rename(&new, &acl_file).with_context(|| format!("replacing {}", shown(&acl_file)))?;
    }

    let redis_env = format!("REDISCLI_AUTH={}\n", dir.password(User::Admin)?);
    let services_env = topology.services_env(&dir.password(User::Agent)?);
    let redis_env_changed = write_private_if_changed(&dir.redis_env(), &redis_env)?;
    write_private_if_changed(&dir.services_env(), &services_env)?;
    let cluster_conf = format!("masterauth {}\n", dir.password(User::Admin)?);
    write_private_if_changed(&dir.cluster_conf(), &cluster_conf)?;
    // Read by the nodes' user 10001 through the bind mount; the 0700 directory keeps the host's
    // other users out.
    set_mode(&dir.cluster_conf(), 0o644)?;

    Ok(Rendered {
        created,
        acl_changed,
        redis_env_changed,
        acl_file,
    })
}

/// The Docker (or test) side of a password rotation.
pub trait RotationTarget {
    /// Whether the Redis of the deployment runs.
    fn redis_running(&mut self) -> anyhow::Result<bool>;
    /// Sends `ACL SETUSER agent <rule>` to Redis (never on a command line) and returns its reply.
    fn acl_setuser(&mut self, rule: &str) -> anyhow::Result<String>;
    /// Recreates the orchestrator and the workers, so they read the new `services.env`, and waits
    /// until they are healthy.
    fn recreate_services(&mut self) -> anyhow::Result<()>;
}

/// Gives the Redis user `agent` a new password with no failed Redis call:
///
/// 1. the current password becomes `redis-agent-password.previous` and a new one is created;
///    the ACL file lists both hashes;
/// 2. `ACL SETUSER agent #<new>`: Redis accepts both (`ACL LOAD` would drop every connection);
/// 3. the services are recreated with the new `REDIS_URL`;
/// 4. `ACL SETUSER agent !<old>`, the `.previous` file goes, the ACL file lists the new hash only.
///
/// A rotation that stopped half-way (the `.previous` file exists) is finished, not restarted.
/// Call [`render`] first, as every compose recipe does.
pub fn rotate_agent_password(
    dir: &SecretsDir,
    template: &Path,
    topology: &RedisTopology,
    target: &mut dyn RotationTarget,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    ensure!(
        target.redis_running()?,
        "agent-redis is not running; start the deployment with: just up"
    );
    let current = dir.password_file(User::Agent);
    let previous = dir.previous_agent_password_file();
    if non_empty(&previous)? {
        writeln!(out, "rotate: finishing the rotation that stopped half-way")?;
    } else {
        fs::rename(&current, &previous)
            .with_context(|| format!("moving {} aside", shown(&current)))?;
        render(dir, template, topology, out)?; // a new password; the ACL file lists both hashes
    }
    let new_hash = file_hash(&current)?.context("the new agent password is empty")?;
    let old_hash = file_hash(&previous)?.context("the previous agent password is empty")?;

    acl_setuser(target, &new_hash, false)?;
    writeln!(
        out,
        "rotate: Redis accepts the old and the new password; recreating the orchestrator and the workers"
    )?;
    target.recreate_services()?;
    acl_setuser(target, &format!("!{}", &old_hash[1..]), true)?;
    fs::remove_file(&previous).with_context(|| format!("removing {}", shown(&previous)))?;
    render(dir, template, topology, out)?;
    writeln!(
        out,
        "rotate: done; the old password of the Redis user agent is refused from now on"
    )?;
    Ok(())
}

/// `ACL SETUSER agent <rule>`, which must answer OK. Removing a password that is already gone
/// (a rotation that stopped right after this step) counts as done.
fn acl_setuser(target: &mut dyn RotationTarget, rule: &str, removal: bool) -> anyhow::Result<()> {
    let reply = target.acl_setuser(rule)?;
    let reply = reply.trim();
    let already_removed = removal && reply.contains("password you are trying to remove");
    if reply != "OK" && !already_removed {
        bail!("ACL SETUSER failed: {reply}");
    }
    Ok(())
}

/// One key of the Kubernetes Secret and the file holding its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFile {
    /// The key in the Secret.
    pub key: &'static str,
    /// The file whose bytes are the value (no trailing newline where it matters).
    pub path: PathBuf,
}

/// Renders the secrets into `dir` (a fresh temporary directory) and returns the files of the
/// Kubernetes Secret [`K8S_SECRET`]: `REDIS_URL`, `REDIS_USERNAME`, `REDIS_PASSWORD`,
/// `REDISCLI_AUTH` and `users.acl`, and for a Redis Cluster also `REDIS_CLUSTER_URLS` and
/// `redis-cluster.conf`. The values are files, so `kubectl --from-file` takes their bytes as
/// they are and no value reaches a command line.
pub fn k8s_secret_files(
    dir: &SecretsDir,
    template: &Path,
    topology: &RedisTopology,
    out: &mut dyn Write,
) -> anyhow::Result<Vec<SecretFile>> {
    render(dir, template, topology, out)?;
    let url = dir.path().join("redis-url");
    write_private(&url, &services_redis_url(&dir.password(User::Agent)?))?;
    let username = dir.path().join("redis-username");
    write_private(&username, AGENT_USER)?;
    let mut files = vec![
        SecretFile {
            key: "REDIS_URL",
            path: url,
        },
        SecretFile {
            key: "REDIS_USERNAME",
            path: username,
        },
        SecretFile {
            key: "REDIS_PASSWORD",
            path: dir.password_file(User::Agent),
        },
        SecretFile {
            key: "REDISCLI_AUTH",
            path: dir.password_file(User::Admin),
        },
        SecretFile {
            key: "users.acl",
            path: dir.acl_file(),
        },
    ];
    if let RedisTopology::Cluster { shards, .. } = topology {
        let agent = dir.password(User::Agent)?;
        for (key, file, value) in [
            (
                "REDIS_CLUSTER_URLS",
                "redis-cluster-urls",
                topology.cluster_urls(&agent),
            ),
            ("QUEUE_PARTITIONS", "queue-partitions", shards.to_string()),
            ("REPLICA_ACKS", "replica-acks", "1".to_owned()),
        ] {
            let path = dir.path().join(file);
            write_private(&path, &value)?;
            files.push(SecretFile { key, path });
        }
        files.push(SecretFile {
            key: "redis-cluster.conf",
            path: dir.cluster_conf(),
        });
    }
    Ok(files)
}

/// The arguments of `kubectl -n agent-system create secret generic agent-redis --from-file=...`.
pub fn k8s_create_secret_args(files: &[SecretFile]) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = [
        "-n",
        K8S_NAMESPACE,
        "create",
        "secret",
        "generic",
        K8S_SECRET,
    ]
    .map(Into::into)
    .to_vec();
    for file in files {
        let mut arg = std::ffi::OsString::from(format!("--from-file={}=", file.key));
        arg.push(&file.path);
        args.push(arg);
    }
    args
}

/// `path` relative to the current directory when it lies below it, for messages.
pub fn shown(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .filter(|relative| !relative.as_os_str().is_empty())
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The first line without surrounding blanks (what `read -r` gives).
fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default().trim()
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", shown(path)))
}

fn read_optional(path: &Path) -> anyhow::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("reading {}", shown(path))),
    }
}

/// Whether `path` exists and is not empty (the shell's `test -s`).
fn non_empty(path: &Path) -> anyhow::Result<bool> {
    match fs::metadata(path) {
        Ok(metadata) => Ok(metadata.len() > 0),
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err).with_context(|| format!("reading {}", shown(path))),
    }
}

/// [`password_hash`] of a password file, `None` when it is missing or empty.
fn file_hash(path: &Path) -> anyhow::Result<Option<String>> {
    Ok(read_optional(path)?
        .filter(|text| !text.is_empty())
        .map(|text| password_hash(&text)))
}

fn hashes(files: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    files
        .iter()
        .filter_map(|file| file_hash(file).transpose())
        .collect()
}

/// Writes `content`; a file created now gets mode 0600 from its first byte on, an existing one
/// keeps its mode.
fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", shown(path)))?;
    file.write_all(content.as_bytes())
        .with_context(|| format!("writing {}", shown(path)))
}

/// [`write_private`] unless the file already holds `content` (compared without trailing newlines,
/// as the shell's `$(cat ...)` does); returns whether it wrote.
fn write_private_if_changed(path: &Path, content: &str) -> anyhow::Result<bool> {
    let old = read_optional(path)?.unwrap_or_default();
    if old == content {
        return Ok(false);
    }
    write_private(path, content)?;
    Ok(old.trim_end_matches('\n') != content.trim_end_matches('\n'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> PathBuf {
        crate::images::default_workspace_root().join(ACL_TEMPLATE)
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    fn render_quietly(dir: &SecretsDir) -> (Rendered, String) {
        let mut out = Vec::new();
        let rendered = render(dir, &template(), &RedisTopology::Single, &mut out).expect("render");
        (rendered, String::from_utf8(out).expect("utf-8"))
    }

    fn passwords(dir: &SecretsDir) -> Vec<String> {
        let mut all = vec![
            dir.password(User::Admin).expect("admin"),
            dir.password(User::Agent).expect("agent"),
        ];
        if let Ok(previous) = fs::read_to_string(dir.previous_agent_password_file()) {
            all.push(previous);
        }
        all
    }

    /// The value of `key` in the Secret's files.
    fn secret_value(files: &[SecretFile], key: &str) -> String {
        let file = files.iter().find(|f| f.key == key).expect("key");
        fs::read_to_string(&file.path).expect("value")
    }

    fn assert_no_password(text: &str, passwords: &[String]) {
        for password in passwords {
            assert!(
                !text.contains(password.as_str()),
                "a password shows in {text:?}"
            );
        }
    }

    #[test]
    fn hashes_are_sha256_of_the_password_without_newlines() {
        // FIPS 180-2 test vector.
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_hex("abc"), abc);
        assert_eq!(password_hash("abc"), format!("#{abc}"));
        assert_eq!(password_hash("abc\n"), format!("#{abc}"));
    }

    #[test]
    fn new_passwords_are_64_hex_digits_and_differ() {
        let (a, b) = (new_password().expect("a"), new_password().expect("b"));
        assert_eq!(a.len(), 2 * PASSWORD_BYTES);
        assert!(a.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn the_acl_keeps_the_user_lines_and_replaces_each_placeholder() {
        let template = format!(
            "# comment {ADMIN_PLACEHOLDER}\n\nuser default on {ADMIN_PLACEHOLDER} ~* +@all\n\
             user agent on {AGENT_PLACEHOLDER} ~agent:* +ping\n  user indented\n"
        );
        let acl = render_acl(
            &template,
            &["#a".to_owned()],
            &["#b".to_owned(), "#c".to_owned()],
        );
        assert_eq!(
            acl,
            "user default on #a ~* +@all\nuser agent on #b #c ~agent:* +ping\n"
        );
    }

    #[test]
    fn render_writes_consistent_files_with_their_modes_and_prints_no_secret() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = SecretsDir::new(tmp.path().join("secrets"));

        let (first, output) = render_quietly(&dir);
        assert_eq!(first.created, User::ALL);
        assert!(first.acl_changed && first.redis_env_changed);
        assert_eq!(
            first.restart_hint(),
            None,
            "a new redis.env recreates Redis"
        );
        assert!(output.contains("created the Redis admin password in "));
        assert!(output.contains("created the Redis agent password in "));

        let [admin, agent] = User::ALL.map(|u| dir.password(u).expect("password"));
        assert_ne!(admin, agent);
        for password in [&admin, &agent] {
            assert_eq!(password.len(), 64);
        }
        assert_no_password(&output, &[admin.clone(), agent.clone()]);
        assert_eq!(
            fs::read_to_string(dir.redis_env()).expect("redis.env"),
            format!("REDISCLI_AUTH={admin}\n")
        );
        assert_eq!(
            fs::read_to_string(dir.services_env()).expect("services.env"),
            format!("REDIS_URL=redis://agent:{agent}@agent-redis:6379\n")
        );
        let acl = fs::read_to_string(dir.acl_file()).expect("acl");
        assert!(acl.lines().all(|l| l.starts_with("user ")), "{acl}");
        assert!(acl.contains(&format!("user default on {} ", password_hash(&admin))));
        assert!(acl.contains(&format!("user agent on {} ", password_hash(&agent))));
        assert_no_password(&acl, &[admin.clone(), agent.clone()]);

        assert_eq!(mode(dir.path()), 0o700);
        assert_eq!(mode(&dir.acl_dir()), 0o755);
        assert_eq!(mode(&dir.acl_file()), 0o644);
        for file in [
            dir.password_file(User::Admin),
            dir.password_file(User::Agent),
            dir.redis_env(),
            dir.services_env(),
        ] {
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
    }

    #[test]
    fn a_cluster_topology_names_every_node_and_asks_for_a_replica() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = SecretsDir::new(tmp.path().join("secrets"));
        let topology = RedisTopology::Cluster {
            nodes: vec!["n1:6379".to_owned(), "n2:6379".to_owned()],
            shards: 2,
        };
        let mut out = Vec::new();
        render(&dir, &template(), &topology, &mut out).expect("render");
        let [admin, agent] = User::ALL.map(|u| dir.password(u).expect("password"));
        assert_eq!(
            fs::read_to_string(dir.services_env()).expect("services.env"),
            format!(
                "REDIS_CLUSTER_URLS=redis://agent:{agent}@n1:6379,redis://agent:{agent}@n2:6379\n\
                 QUEUE_PARTITIONS=2\nREPLICA_ACKS=1\n"
            )
        );
        assert_eq!(
            fs::read_to_string(dir.cluster_conf()).expect("cluster conf"),
            format!("masterauth {admin}\n")
        );
        assert_eq!(mode(&dir.cluster_conf()), 0o644);
        assert_eq!(
            mode(dir.path()),
            0o700,
            "the directory keeps the conf private"
        );
        assert_no_password(&String::from_utf8(out).expect("utf-8"), &[admin, agent]);

        let files = k8s_secret_files(&dir, &template(), &topology, &mut Vec::new()).expect("k8s");
        let keys: Vec<&str> = files.iter().map(|f| f.key).collect();
        assert_eq!(
            keys[5..],
            [
                "REDIS_CLUSTER_URLS",
                "QUEUE_PARTITIONS",
                "REPLICA_ACKS",
                "redis-cluster.conf"
            ]
        );
        let value = |key: &str| secret_value(&files, key);
        assert_eq!(value("QUEUE_PARTITIONS"), "2");
        assert_eq!(
            value("REDIS_CLUSTER_URLS"),
            topology.cluster_urls(&dir.password(User::Agent).expect("agent"))
        );
    }

    #[test]
    fn a_second_render_changes_nothing_and_prints_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = SecretsDir::new(tmp.path().join("secrets"));
        render_quietly(&dir);
        let snapshot = |dir: &SecretsDir| -> Vec<(PathBuf, Vec<u8>, u32, std::time::SystemTime)> {
            let mut files = Vec::new();
            for entry in walk(dir.path()) {
                let metadata = fs::metadata(&entry).expect("metadata");
                let content = if metadata.is_file() {
                    fs::read(&entry).expect("read")
                } else {
                    Vec::new()
                };
                let modified = metadata.modified().expect("mtime");
                files.push((entry, content, metadata.permissions().mode(), modified));
            }
            files
        };
        let before = snapshot(&dir);

        let (second, output) = render_quietly(&dir);
        assert_eq!(output, "", "nothing to say when nothing changed");
        assert_eq!(
            second,
            Rendered {
                created: Vec::new(),
                acl_changed: false,
                redis_env_changed: false,
                acl_file: dir.acl_file(),
            }
        );
        assert_eq!(snapshot(&dir), before, "a second run touches no file");
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut paths = vec![dir.to_path_buf()];
        let mut entries: Vec<PathBuf> = fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").path())
            .collect();
        entries.sort();
        for entry in entries {
            if entry.is_dir() {
                paths.extend(walk(&entry));
            } else {
                paths.push(entry);
            }
        }
        paths
    }

    #[test]
    fn a_changed_acl_alone_asks_for_a_redis_restart() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = SecretsDir::new(tmp.path().join("secrets"));
        render_quietly(&dir);
        fs::write(dir.acl_file(), "user default on nopass\n").expect("tamper");
        let (rendered, output) = render_quietly(&dir);
        assert_eq!(output, "");
        assert!(rendered.acl_changed && !rendered.redis_env_changed);
        let hint = rendered.restart_hint().expect("a hint");
        assert!(
            hint.starts_with("note: ")
                && hint.ends_with(
                    "users.acl changed; agent-redis reads it when it starts: just restart redis"
                ),
            "{hint}"
        );
        assert_eq!(mode(&dir.acl_file()), 0o644);
    }

    #[test]
    fn existing_passwords_are_kept_and_a_rotation_lists_both_agent_hashes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = SecretsDir::new(tmp.path().join("secrets"));
        fs::create_dir_all(dir.path()).expect("mkdir");
        fs::write(dir.password_file(User::Admin), "a".repeat(64) + "\n").expect("admin");
        fs::write(dir.password_file(User::Agent), "b".repeat(64)).expect("agent");
        fs::write(dir.previous_agent_password_file(), "c".repeat(64)).expect("previous");

        let (rendered, _) = render_quietly(&dir);
        assert_eq!(rendered.created, Vec::<User>::new());
        assert_eq!(
            fs::read_to_string(dir.redis_env()).expect("redis.env"),
            format!("REDISCLI_AUTH={}\n", "a".repeat(64))
        );
        let acl = fs::read_to_string(dir.acl_file()).expect("acl");
        assert!(acl.contains(&format!(
            "user default on {} ",
            password_hash(&"a".repeat(64))
        )));
        assert!(acl.contains(&format!(
            "user agent on {} {} ",
            password_hash(&"b".repeat(64)),
            password_hash(&"c".repeat(64))
        )));
    }

    #[test]
    fn the_k8s_secret_is_made_of_files_and_its_command_line_holds_no_secret() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = SecretsDir::new(tmp.path());
        let files = k8s_secret_files(&dir, &template(), &RedisTopology::Single, &mut Vec::new())
            .expect("files");
        let keys: Vec<&str> = files.iter().map(|f| f.key).collect();
        assert_eq!(
            keys,
            [
                "REDIS_URL",
                "REDIS_USERNAME",
                "REDIS_PASSWORD",
                "REDISCLI_AUTH",
                "users.acl"
            ]
        );
        let value = |key: &str| secret_value(&files, key);
        let agent = dir.password(User::Agent).expect("agent");
        assert_eq!(value("REDIS_URL"), services_redis_url(&agent));
        assert_eq!(value("REDIS_USERNAME"), "agent");
        assert_eq!(value("REDIS_PASSWORD"), agent);
        assert_eq!(
            value("REDISCLI_AUTH"),
            dir.password(User::Admin).expect("admin")
        );
        assert_eq!(
            value("users.acl"),
            fs::read_to_string(dir.acl_file()).expect("acl")
        );

        let args = k8s_create_secret_args(&files);
        let line = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(line.starts_with(
            "-n agent-system create secret generic agent-redis --from-file=REDIS_URL="
        ));
        assert_no_password(&line, &passwords(&dir));
    }

    /// Redis in memory: the users' password hashes, and every call the rotation made.
    #[derive(Default)]
    struct FakeRedis {
        running: bool,
        agent_hashes: Vec<String>,
        calls: Vec<String>,
        fail_recreate: bool,
    }

    impl RotationTarget for FakeRedis {
        fn redis_running(&mut self) -> anyhow::Result<bool> {
            Ok(self.running)
        }

        fn acl_setuser(&mut self, rule: &str) -> anyhow::Result<String> {
            self.calls.push(format!("ACL SETUSER agent {rule}"));
            if let Some(hash) = rule.strip_prefix('#') {
                if !self.agent_hashes.iter().any(|h| h == hash) {
                    self.agent_hashes.push(hash.to_owned());
                }
                Ok("OK".to_owned())
            } else if let Some(hash) = rule.strip_prefix('!') {
                let before = self.agent_hashes.len();
                self.agent_hashes.retain(|h| h != hash);
                Ok(if self.agent_hashes.len() < before {
                    "OK".to_owned()
                } else {
                    format!(
                        "ERR Error in ACL SETUSER modifier '!{hash}': The password you are \
                         trying to remove from the user does not exist"
                    )
                })
            } else {
                Ok(format!("ERR unknown rule {rule}"))
            }
        }

        fn recreate_services(&mut self) -> anyhow::Result<()> {
            self.calls.push("recreate".to_owned());
            if self.fail_recreate {
                bail!("agent-orchestrator: 0 of 1 containers healthy after 120s");
            }
            Ok(())
        }
    }

    fn hash_of(dir: &SecretsDir, user: User) -> String {
        password_hash(&dir.password(user).expect("password"))[1..].to_owned()
    }

    #[test]
    fn a_rotation_adds_the_new_hash_recreates_the_services_then_drops_the_old_hash() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = SecretsDir::new(tmp.path().join("secrets"));
        render_quietly(&dir);
        let old = dir.password(User::Agent).expect("old");
        let old_hash = hash_of(&dir, User::Agent);
        let mut redis = FakeRedis {
            running: true,
            agent_hashes: vec![old_hash.clone()],
            ..FakeRedis::default()
        };

        let mut out = Vec::new();
        rotate_agent_password(
            &dir,
            &template(),
            &RedisTopology::Single,
            &mut redis,
            &mut out,
        )
        .expect("rotation");
        let out = String::from_utf8(out).expect("utf-8");

        let new = dir.password(User::Agent).expect("new");
        let new_hash = hash_of(&dir, User::Agent);
        assert_ne!(new, old);
        assert_eq!(
            redis.calls,
            [
                format!("ACL SETUSER agent #{new_hash}"),
                "recreate".to_owned(),
                format!("ACL SETUSER agent !{old_hash}"),
            ]
        );
        assert_eq!(redis.agent_hashes, std::slice::from_ref(&new_hash));
        assert!(!dir.previous_agent_password_file().exists());
        let acl = fs::read_to_string(dir.acl_file()).expect("acl");
        assert!(
            acl.contains(&format!("user agent on #{new_hash} ")),
            "{acl}"
        );
        assert!(!acl.contains(&old_hash), "the old hash left the ACL file");
        assert!(
            fs::read_to_string(dir.services_env())
                .expect("services.env")
                .contains(&new)
        );
        assert!(
            out.starts_with("created the Redis agent password in "),
            "{out}"
        );
        assert!(out.contains("rotate: Redis accepts the old and the new password"));
        assert!(out.ends_with(
            "rotate: done; the old password of the Redis user agent is refused from now on\n"
        ));
        assert_no_password(&out, &[old, new]);
        assert_eq!(mode(&dir.password_file(User::Agent)), 0o600);
    }

    #[test]
    fn a_rotation_that_stopped_half_way_is_finished_with_the_same_new_password() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = SecretsDir::new(tmp.path().join("secrets"));
        render_quietly(&dir);
        let old_hash = hash_of(&dir, User::Agent);
        let mut redis = FakeRedis {
            running: true,
            agent_hashes: vec![old_hash.clone()],
            fail_recreate: true,
            ..FakeRedis::default()
        };

        let err = rotate_agent_password(
            &dir,
            &template(),
            &RedisTopology::Single,
            &mut redis,
            &mut Vec::new(),
        )
        .expect_err("the services did not come up");
        assert!(format!("{err:#}").contains("healthy"), "{err:#}");
        let new = dir.password(User::Agent).expect("new");
        let new_hash = hash_of(&dir, User::Agent);
        assert!(
            dir.previous_agent_password_file().exists(),
            "half-way state"
        );
        assert_eq!(redis.agent_hashes, [old_hash.clone(), new_hash.clone()]);
        let acl = fs::read_to_string(dir.acl_file()).expect("acl");
        assert!(
            acl.contains(&format!("user agent on #{new_hash} #{old_hash} ")),
            "{acl}"
        );

        // A render in between (any compose recipe) keeps the half-way state.
        render_quietly(&dir);
        redis.fail_recreate = false;
        let mut out = Vec::new();
        rotate_agent_password(
            &dir,
            &template(),
            &RedisTopology::Single,
            &mut redis,
            &mut out,
        )
        .expect("finishing");
        let out = String::from_utf8(out).expect("utf-8");
        assert!(
            out.starts_with("rotate: finishing the rotation that stopped half-way\n"),
            "{out}"
        );
        assert_eq!(dir.password(User::Agent).expect("same new"), new);
        assert_eq!(redis.agent_hashes, [new_hash]);
        assert!(!dir.previous_agent_password_file().exists());

        // Stopped after the old hash was removed from Redis, before the file went: done anyway.
        fs::write(dir.previous_agent_password_file(), "d".repeat(64)).expect("previous");
        rotate_agent_password(
            &dir,
            &template(),
            &RedisTopology::Single,
            &mut redis,
            &mut Vec::new(),
        )
        .expect("an already removed password is fine");
        assert!(!dir.previous_agent_password_file().exists());
    }

    #[test]
    fn a_rotation_needs_a_running_redis_and_an_ok_reply() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = SecretsDir::new(tmp.path().join("secrets"));
        render_quietly(&dir);
        let before = dir.password(User::Agent).expect("agent");
        let mut stopped = FakeRedis::default();
        let err = rotate_agent_password(
            &dir,
            &template(),
            &RedisTopology::Single,
            &mut stopped,
            &mut Vec::new(),
        )
        .expect_err("Redis is not running");
        assert_eq!(
            err.to_string(),
            "agent-redis is not running; start the deployment with: just up"
        );
        assert_eq!(
            dir.password(User::Agent).expect("agent"),
            before,
            "untouched"
        );
        assert!(stopped.calls.is_empty());

        struct Refusing;
        impl RotationTarget for Refusing {
            fn redis_running(&mut self) -> anyhow::Result<bool> {
                Ok(true)
            }
            fn acl_setuser(&mut self, _: &str) -> anyhow::Result<String> {
                Ok("NOPERM this user has no permissions".to_owned())
            }
            fn recreate_services(&mut self) -> anyhow::Result<()> {
                panic!("must not recreate the services when Redis refused the new password")
            }
        }
        let err = rotate_agent_password(
            &dir,
            &template(),
            &RedisTopology::Single,
            &mut Refusing,
            &mut Vec::new(),
        )
        .expect_err("refused");
        assert_eq!(
            err.to_string(),
            "ACL SETUSER failed: NOPERM this user has no permissions"
        );
    }
}
