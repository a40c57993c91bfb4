//! The fixture of every test: a faultfs mounted over a fresh backing directory.

// Each test file uses its own part of the fixture.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use faultfs::{Control, Mounted};
use tempfile::TempDir;

/// A faultfs over a temporary backing directory, at a temporary mount point. Fields drop in
/// order: the filesystem is unmounted before its directories are removed.
pub struct Fixture {
    pub fs: Mounted,
    _mountpoint: TempDir,
    backing: TempDir,
}

impl Fixture {
    /// Mounts a fresh faultfs.
    pub fn mount() -> Self {
        let backing = tempfile::Builder::new()
            .prefix("faultfs-backing-")
            .tempdir()
            .expect("backing dir");
        let mountpoint = tempfile::Builder::new()
            .prefix("faultfs-mnt-")
            .tempdir()
            .expect("mount point");
        let fs = faultfs::mount(backing.path(), mountpoint.path())
            .unwrap_or_else(|e| panic!("mounting faultfs: {e:#}"));
        Self {
            fs,
            _mountpoint: mountpoint,
            backing,
        }
    }

    /// `rel` in the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.fs.mountpoint().join(rel)
    }

    /// `rel` in the backing directory: what is really on disk.
    pub fn backing(&self, rel: &str) -> PathBuf {
        self.backing.path().join(rel)
    }

    /// The mount point.
    pub fn mountpoint(&self) -> &Path {
        self.fs.mountpoint()
    }

    /// The fault injector.
    pub fn control(&self) -> Control {
        self.fs.control()
    }
}
