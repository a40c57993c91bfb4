//! A FUSE pass-through filesystem that can lose power and fill up, with the semantics of
//! [LazyFS](https://github.com/dsrhaslab/lazyfs): Redis's data directory sits on it so the
//! harness can simulate
//!
//! 1. a **power loss** ([`Control::power_loss`]): every write not yet fsynced is dropped, and
//!    Redis starts again on what was really synced;
//! 2. a **full disk** ([`Control::set_disk_full`]): writes are refused with `ENOSPC` until healed.
//!
//! [`mount`] mounts a pass-through of a backing directory (through `fusermount3`; the daemon
//! is a thread of the calling process) and returns a [`Mounted`] that unmounts when dropped.
//!
//! # Semantics
//!
//! - **File data** written through the mount does not reach the backing file: it is kept in
//!   memory per file (byte extents, a later write overriding an earlier one) until an `fsync`
//!   or `fdatasync` of that file, which writes it to the backing file and syncs that. `close`
//!   (FUSE `flush`/`release`) persists nothing: data closed without an fsync is lost on a power
//!   loss, as on a real disk with a volatile cache. Reads return the pending data over the
//!   backing file; sizes (`stat`) include pending extensions.
//! - **Metadata** operations (create, mkdir, unlink, rmdir, rename, symlink, chmod, chown,
//!   utimes) are applied to the backing directory at once and so survive a power loss (a
//!   simplification: LazyFS, like a real filesystem, may also lose recent metadata). A file
//!   created and written but never fsynced therefore survives a power loss, empty or short.
//! - **Truncation** (`truncate`/`ftruncate`, `O_TRUNC`) is applied to the backing file at once,
//!   and pending bytes beyond the new size are dropped (a simplification too).
//! - Every file is opened with `FOPEN_DIRECT_IO`, so the kernel's page cache never serves data
//!   the filesystem dropped, and attributes and entries are never cached (TTL 0): after a power
//!   loss, reads and sizes show the backing data.
//! - **Disk full**: while on, writes, creates, mkdirs, symlinks and truncates that grow a file
//!   fail with `ENOSPC`, and `statfs` (`df`) reports no free blocks or inodes. An fsync still
//!   succeeds (its data was accepted earlier). Reads, unlinks, renames and shrinking truncates
//!   work, so a process can free space.
//! - The mount uses `allow_other` (processes of other users, and root in Docker containers the
//!   mount point is bind-mounted into, may use it), `default_permissions` (the kernel checks
//!   permissions from the reported modes) and `auto_unmount` (`fusermount3` unmounts it if the
//!   process dies without unmounting). Its source in the mount table is `agent-faultfs`, type
//!   `fuse.faultfs`. The daemon runs as the calling user: as root, new files and directories are
//!   given to the creating process's user and group.
//! - Unmounting (dropping [`Mounted`]) discards unsynced writes, as LazyFS does when it exits.
//!
//! # Limitations
//!
//! - `mmap`: a shared mapping (`MAP_SHARED`) of a file fails with `ENODEV` (direct I/O);
//!   private mappings work but read a snapshot.
//! - Not implemented (the caller sees `ENOSYS`, `EPERM` or `EOPNOTSUPP`): hard links (`link`),
//!   `mknod` (FIFOs, sockets, devices), extended attributes, `fallocate`, `RENAME_EXCHANGE`
//!   (`EINVAL`; `RENAME_NOREPLACE` works). File locks (`flock`, `fcntl`) are the kernel's own,
//!   which is enough for processes on the same machine.
//! - A power loss should hit files nobody has open (kill the writers first, as a real crash
//!   does): the kernel keeps its own idea of the size of an open file, so a process that
//!   appends (`O_APPEND`) to a file it held open across [`Control::power_loss`] writes at the
//!   old end, leaving a hole of zeros.
//! - Pending data lives in memory: a write-heavy process that never fsyncs grows this process.
//! - One thread serves every request (a global lock): meant for tests, not throughput.
//! - Unmounting while a process still has files open detaches the mount at once, but its
//!   session lives on until they close them: [`Mounted`] waits 10 s, then gives up with a
//!   warning. Every mount leaves a `fusermount3` zombie until this process exits (fuser drops
//!   the child's handle without waiting for it).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context;
use fuser::{BackgroundSession, Config, MountOption, SessionACL};

mod fs;
mod pending;

use fs::{FaultFs, State};

/// How long unmounting may take before [`Mounted`] gives up on it (a process still using the
/// mount keeps it alive).
const UNMOUNT_TIMEOUT: Duration = Duration::from_secs(10);

/// Mounts a pass-through of `backing` (an existing directory) at `mountpoint` (an existing
/// empty directory); unmounted when the returned [`Mounted`] is dropped.
///
/// Needs `/dev/fuse` and the `fusermount3` program (package `fuse3`); returns once the
/// filesystem answers.
pub fn mount(backing: &Path, mountpoint: &Path) -> anyhow::Result<Mounted> {
    let root = backing
        .canonicalize()
        .with_context(|| format!("the backing directory {}", backing.display()))?;
    anyhow::ensure!(root.is_dir(), "{} is not a directory", root.display());
    let mountpoint = mountpoint
        .canonicalize()
        .with_context(|| format!("the mount point {}", mountpoint.display()))?;
    anyhow::ensure!(
        mountpoint.is_dir(),
        "{} is not a directory",
        mountpoint.display()
    );
    let state = Arc::new(Mutex::new(State::new(root)));
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("agent-faultfs".to_owned()),
        MountOption::Subtype("faultfs".to_owned()),
        MountOption::DefaultPermissions,
        MountOption::AutoUnmount,
    ];
    config.acl = SessionACL::All;
    let filesystem = FaultFs {
        state: Arc::clone(&state),
    };
    let session = fuser::spawn_mount(filesystem, &mountpoint, &config).with_context(|| {
        format!(
            "mounting faultfs at {} (needs /dev/fuse and fusermount3)",
            mountpoint.display()
        )
    })?;
    Ok(Mounted {
        session: Some(session),
        mountpoint,
        control: Control { state },
    })
}

/// A mounted faultfs: the FUSE session serving it runs on a background thread. Dropping it
/// unmounts the filesystem (unsynced writes are lost) and waits for the session to end, at
/// most 10 s (it cannot end while a process still has files open in it).
pub struct Mounted {
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
    control: Control,
}

impl Mounted {
    /// The handle that injects faults; clone it freely, use it from any thread.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Where the filesystem is mounted (canonical).
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts now, with the error that dropping would only log.
    pub fn unmount(mut self) -> anyhow::Result<()> {
        self.unmount_now()
    }

    fn unmount_now(&mut self) -> anyhow::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        // fusermount3's `auto_unmount` only unmounts for a daemon that died, so this detaches
        // the mount itself (lazily: a process still using it keeps it alive until it lets go).
        detach(&self.mountpoint)?;
        let (done, finished) = mpsc::channel();
        std::thread::Builder::new()
            .name("faultfs-unmount".to_owned())
            .spawn(move || {
                let _ = done.send(session.umount_and_join());
            })
            .context("spawning the unmount thread")?;
        match finished.recv_timeout(UNMOUNT_TIMEOUT) {
            Ok(result) => {
                result.with_context(|| format!("unmounting {}", self.mountpoint.display()))
            }
            Err(_) => anyhow::bail!(
                "unmounting {} did not finish within {UNMOUNT_TIMEOUT:?} (is a process still \
                 using it?)",
                self.mountpoint.display()
            ),
        }
    }
}

/// Lazily unmounts `mountpoint`: directly as root, through `fusermount3 -u -z` otherwise.
fn detach(mountpoint: &Path) -> anyhow::Result<()> {
    match nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EPERM) => {
            let status = std::process::Command::new("fusermount3")
                .args(["-u", "-z", "--"])
                .arg(mountpoint)
                .status()
                .context("running fusermount3 -u")?;
            anyhow::ensure!(
                status.success(),
                "fusermount3 -u {} failed: {status}",
                mountpoint.display()
            );
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("unmounting {}", mountpoint.display())),
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_now() {
            tracing::warn!("faultfs: {e:#}");
        }
    }
}

impl fmt::Debug for Mounted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mounted")
            .field("mountpoint", &self.mountpoint)
            .field("control", &self.control)
            .finish_non_exhaustive()
    }
}

/// Injects faults into a mounted faultfs: cheap to clone, `Send + Sync`, usable from any
/// thread while the filesystem serves requests.
#[derive(Clone)]
pub struct Control {
    state: Arc<Mutex<State>>,
}

impl Control {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops every write not yet fsynced; returns what was dropped.
    ///
    /// Call it when the writers are dead (after a SIGKILL), as a real power loss would find
    /// them: see the crate's limitations.
    pub fn power_loss(&self) -> PowerLoss {
        let dropped = self.lock().power_loss();
        PowerLoss {
            files: dropped.files,
            bytes: dropped.bytes,
        }
    }

    /// While on, writes, creates, mkdirs, symlinks and growing truncates fail with `ENOSPC`,
    /// and `statfs` reports no free space.
    pub fn set_disk_full(&self, full: bool) {
        self.lock().set_disk_full(full);
    }

    /// Whether the disk is full ([`Control::set_disk_full`]).
    pub fn is_disk_full(&self) -> bool {
        self.lock().is_disk_full()
    }

    /// How many bytes were written and not fsynced yet (what a power loss now would drop).
    pub fn unsynced_bytes(&self) -> u64 {
        self.lock().unsynced_bytes()
    }
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("Control")
            .field("disk_full", &state.is_disk_full())
            .field("unsynced_bytes", &state.unsynced_bytes())
            .finish()
    }
}

/// What [`Control::power_loss`] dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PowerLoss {
    /// How many files had unsynced writes.
    pub files: usize,
    /// How many unsynced bytes were dropped (overwritten bytes count once).
    pub bytes: u64,
}

impl fmt::Display for PowerLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} unsynced bytes in {} files dropped",
            self.bytes, self.files
        )
    }
}
