//! Redis's data directory on the fault filesystem ([`faultfs`]), for `power-loss` and
//! `disk-full`.
//!
//! The filesystem keeps every write Redis has not fsynced in memory, so a power loss drops
//! exactly what a machine crash would, and it can refuse writes with `ENOSPC`. It is mounted only
//! for scenarios that use one of those faults (its single-threaded daemon is slower than a
//! disk): under a fresh temporary directory, `synced/` holding what reached the "disk" and
//! `data/` the mount Redis uses (bind-mounted at `/data` in the docker runtime, `--dir` of the
//! process runtime's `redis-server`).

use std::path::{Path, PathBuf};

use anyhow::Context;

/// A mounted fault filesystem and the directory it lives in; unmounted and removed on drop.
pub struct FaultDisk {
    // Fields drop in order: unmount first, then remove the directory.
    mounted: faultfs::Mounted,
    data: PathBuf,
    _root: tempfile::TempDir,
}

impl FaultDisk {
    /// Mounts a fresh, empty fault filesystem.
    pub fn mount(run_id: &str) -> anyhow::Result<Self> {
        let root = tempfile::Builder::new()
            .prefix(&format!("agent-harness-{run_id}-disk-"))
            .tempdir()
            .context("creating the fault filesystem's directory")?;
        let synced = root.path().join("synced");
        let data = root.path().join("data");
        for dir in [&synced, &data] {
            std::fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        // Redis runs as an unprivileged user in its image (and the filesystem checks the modes
        // it reports, which are the backing directory's).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&synced, std::fs::Permissions::from_mode(0o777))
            .context("opening the fault filesystem's root to Redis's user")?;
        let mounted = faultfs::mount(&synced, &data).context(
            "mounting the fault filesystem for Redis's data (needs /dev/fuse and fusermount3, \
             Debian's fuse3)",
        )?;
        Ok(Self {
            data: mounted.mountpoint().to_path_buf(),
            mounted,
            _root: root,
        })
    }

    /// Where Redis keeps its data.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The switches: power loss, disk full.
    pub fn control(&self) -> faultfs::Control {
        self.mounted.control()
    }
}
