//! The FUSE operations: a pass-through of the backing directory whose file data writes wait in
//! memory ([`Pending`]) until the file is fsynced.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{
    DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt, fchown, lchown,
};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};
use nix::sys::stat::{UtimensatFlags, futimens, utimensat};
use nix::sys::time::TimeSpec;

use crate::pending::Pending;

/// Attributes and entries are never cached by the kernel: every size it uses is asked again
/// (pending writes change sizes, a power loss shrinks them).
const TTL: Duration = Duration::ZERO;

/// The inode number of the root (the backing directory itself).
const ROOT: u64 = INodeNo::ROOT.0;

type Result<T> = std::result::Result<T, Errno>;

/// Everything the filesystem and its [`crate::Control`] share.
#[derive(Debug)]
pub(crate) struct State {
    /// The backing directory (canonical).
    root: PathBuf,
    /// Inode → path relative to `root` (the root is the empty path).
    paths: HashMap<u64, PathBuf>,
    /// Path relative to `root` → inode.
    inodes: HashMap<PathBuf, u64>,
    next_ino: u64,
    /// Inode → its writes not yet fsynced.
    pending: HashMap<u64, Pending>,
    /// Open file handles.
    files: HashMap<u64, OpenFile>,
    /// Open directory handles: the entries listed at `opendir`.
    dirs: HashMap<u64, Vec<DirEntry>>,
    next_fh: u64,
    disk_full: bool,
}

#[derive(Debug)]
struct OpenFile {
    ino: u64,
    /// The backing file, opened for reading and writing whatever the caller asked (an fsync on
    /// a read-only descriptor must still write the pending data back).
    file: File,
}

#[derive(Debug)]
struct DirEntry {
    ino: u64,
    kind: FileType,
    name: OsString,
}

/// What a power loss dropped.
#[derive(Debug)]
pub(crate) struct Dropped {
    pub(crate) files: usize,
    pub(crate) bytes: u64,
}

impl State {
    pub(crate) fn new(root: PathBuf) -> Self {
        Self {
            root,
            paths: HashMap::from([(ROOT, PathBuf::new())]),
            inodes: HashMap::from([(PathBuf::new(), ROOT)]),
            next_ino: ROOT + 1,
            pending: HashMap::new(),
            files: HashMap::new(),
            dirs: HashMap::new(),
            next_fh: 1,
            disk_full: false,
        }
    }

    pub(crate) fn power_loss(&mut self) -> Dropped {
        let dropped = Dropped {
            files: self.pending.values().filter(|p| !p.is_empty()).count(),
            bytes: self.unsynced_bytes(),
        };
        self.pending.clear();
        dropped
    }

    pub(crate) fn unsynced_bytes(&self) -> u64 {
        self.pending.values().map(Pending::bytes).sum()
    }

    pub(crate) fn set_disk_full(&mut self, full: bool) {
        self.disk_full = full;
    }

    pub(crate) fn is_disk_full(&self) -> bool {
        self.disk_full
    }

    fn check_space(&self) -> Result<()> {
        if self.disk_full {
            Err(Errno::ENOSPC)
        } else {
            Ok(())
        }
    }

    fn abs(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }

    fn path(&self, ino: u64) -> Result<&Path> {
        self.paths
            .get(&ino)
            .map(PathBuf::as_path)
            .ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<PathBuf> {
        if name.is_empty() || name == "." || name == ".." || name.as_encoded_bytes().contains(&b'/')
        {
            return Err(Errno::EINVAL);
        }
        Ok(self.path(parent)?.join(name))
    }

    /// The inode of `rel`, given a new number the first time.
    fn inode(&mut self, rel: &Path) -> u64 {
        if let Some(&ino) = self.inodes.get(rel) {
            return ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(rel.to_path_buf(), ino);
        self.paths.insert(ino, rel.to_path_buf());
        ino
    }

    fn is_open(&self, ino: u64) -> bool {
        self.files.values().any(|f| f.ino == ino)
    }

    /// `rel` and everything under it no longer exist: their inodes go, and the pending data of
    /// those nobody holds open.
    fn forget_tree(&mut self, rel: &Path) {
        let gone: Vec<PathBuf> = self
            .inodes
            .keys()
            .filter(|p| p.starts_with(rel))
            .cloned()
            .collect();
        for path in gone {
            if let Some(ino) = self.inodes.remove(&path) {
                self.paths.remove(&ino);
                if !self.is_open(ino) {
                    self.pending.remove(&ino);
                }
            }
        }
    }

    /// `from` (and everything under it) was renamed to `to`, replacing what was there.
    fn moved(&mut self, from: &Path, to: &Path) {
        self.forget_tree(to);
        let moving: Vec<(PathBuf, u64)> = self
            .inodes
            .iter()
            .filter(|(p, _)| p.starts_with(from))
            .map(|(p, &ino)| (p.clone(), ino))
            .collect();
        for (old, ino) in moving {
            let new = match old.strip_prefix(from) {
                Ok(rest) if rest.as_os_str().is_empty() => to.to_path_buf(),
                Ok(rest) => to.join(rest),
                Err(_) => continue,
            };
            self.inodes.remove(&old);
            self.inodes.insert(new.clone(), ino);
            self.paths.insert(ino, new);
        }
    }

    /// The backing metadata of `ino`: through `fh` when given, else its path, else any open
    /// handle (a file unlinked while open).
    fn metadata(&self, ino: u64, fh: Option<FileHandle>) -> Result<Metadata> {
        if let Some(file) = fh.and_then(|fh| self.files.get(&fh.0)) {
            return Ok(file.file.metadata()?);
        }
        if let Some(rel) = self.paths.get(&ino) {
            return Ok(fs::symlink_metadata(self.abs(rel))?);
        }
        match self.files.values().find(|f| f.ino == ino) {
            Some(file) => Ok(file.file.metadata()?),
            None => Err(Errno::ENOENT),
        }
    }

    fn pending_end(&self, ino: u64) -> u64 {
        self.pending.get(&ino).map_or(0, Pending::end)
    }

    fn attr(&self, ino: u64, meta: &Metadata) -> FileAttr {
        let kind = FileType::from_std(meta.file_type()).unwrap_or(FileType::RegularFile);
        let size = if kind == FileType::RegularFile {
            meta.size().max(self.pending_end(ino))
        } else {
            meta.size()
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: meta.blocks().max(size.div_ceil(512)),
            atime: system_time(meta.atime(), meta.atime_nsec()),
            mtime: system_time(meta.mtime(), meta.mtime_nsec()),
            ctime: system_time(meta.ctime(), meta.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind,
            perm: (meta.mode() & 0o7777) as u16,
            nlink: meta.nlink() as u32,
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: meta.rdev() as u32,
            blksize: meta.blksize() as u32,
            flags: 0,
        }
    }

    /// The attributes of `ino` (for a reply).
    fn getattr(&self, ino: u64, fh: Option<FileHandle>) -> Result<FileAttr> {
        let meta = self.metadata(ino, fh)?;
        Ok(self.attr(ino, &meta))
    }

    /// Looks `rel` up in the backing directory: its inode and attributes.
    fn entry(&mut self, rel: &Path) -> Result<FileAttr> {
        let meta = fs::symlink_metadata(self.abs(rel))?;
        let ino = self.inode(rel);
        Ok(self.attr(ino, &meta))
    }

    fn add_file(&mut self, ino: u64, file: File) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.files.insert(fh, OpenFile { ino, file });
        fh
    }

    fn open_file(&self, fh: FileHandle) -> Result<&OpenFile> {
        self.files.get(&fh.0).ok_or(Errno::EBADF)
    }

    fn setattr(
        &mut self,
        ino: u64,
        fh: Option<FileHandle>,
        change: &AttrChange,
    ) -> Result<FileAttr> {
        let file = fh.and_then(|fh| self.files.get(&fh.0)).map(|f| &f.file);
        let path = self.paths.get(&ino).map(|rel| self.abs(rel));
        if let Some(size) = change.size {
            let current = self.getattr(ino, fh)?.size;
            if size > current {
                self.check_space()?;
            }
            match (file, &path) {
                (Some(file), _) => file.set_len(size)?,
                (None, Some(path)) => OpenOptions::new().write(true).open(path)?.set_len(size)?,
                (None, None) => return Err(Errno::ENOENT),
            }
            if let Some(pending) = self.pending.get_mut(&ino) {
                pending.truncate(size);
            }
        }
        if let Some(mode) = change.mode {
            let permissions = fs::Permissions::from_mode(mode & 0o7777);
            match (file, &path) {
                (Some(file), _) => file.set_permissions(permissions)?,
                (None, Some(path)) => fs::set_permissions(path, permissions)?,
                (None, None) => return Err(Errno::ENOENT),
            }
        }
        if change.uid.is_some() || change.gid.is_some() {
            match (file, &path) {
                (Some(file), _) => fchown(file, change.uid, change.gid)?,
                (None, Some(path)) => lchown(path, change.uid, change.gid)?,
                (None, None) => return Err(Errno::ENOENT),
            }
        }
        if change.atime.is_some() || change.mtime.is_some() {
            let atime = time_spec(change.atime);
            let mtime = time_spec(change.mtime);
            match (file, &path) {
                (Some(file), _) => futimens(file, &atime, &mtime).map_err(errno)?,
                (None, Some(path)) => utimensat(
                    nix::fcntl::AT_FDCWD,
                    path.as_path(),
                    &atime,
                    &mtime,
                    UtimensatFlags::NoFollowSymlink,
                )
                .map_err(errno)?,
                (None, None) => return Err(Errno::ENOENT),
            }
        }
        self.getattr(ino, fh)
    }

    fn read(&self, fh: FileHandle, offset: u64, size: u32) -> Result<Vec<u8>> {
        let open = self.open_file(fh)?;
        let backing_len = open.file.metadata()?.len();
        let pending = self.pending.get(&open.ino);
        let len = backing_len.max(pending.map_or(0, Pending::end));
        if offset >= len {
            return Ok(Vec::new());
        }
        let mut buf = vec![0; (len - offset).min(u64::from(size)) as usize];
        if offset < backing_len {
            let from_backing = ((backing_len - offset) as usize).min(buf.len());
            read_fully(&open.file, &mut buf[..from_backing], offset)?;
        }
        if let Some(pending) = pending {
            pending.overlay(offset, &mut buf);
        }
        Ok(buf)
    }

    fn write(&mut self, fh: FileHandle, offset: u64, data: &[u8]) -> Result<u32> {
        self.check_space()?;
        let ino = self.open_file(fh)?.ino;
        self.pending.entry(ino).or_default().write(offset, data);
        Ok(data.len() as u32)
    }

    /// Writes the pending data of the file back and syncs the backing file.
    fn fsync(&mut self, fh: FileHandle, datasync: bool) -> Result<()> {
        let open = self.open_file(fh)?;
        if let Some(pending) = self.pending.get(&open.ino) {
            for (offset, data) in pending.extents() {
                open.file.write_all_at(data, offset)?;
            }
        }
        if datasync {
            open.file.sync_data()?;
        } else {
            open.file.sync_all()?;
        }
        let ino = open.ino;
        self.pending.remove(&ino);
        Ok(())
    }

    fn release(&mut self, fh: FileHandle) {
        if let Some(open) = self.files.remove(&fh.0)
            && !self.paths.contains_key(&open.ino)
            && !self.is_open(open.ino)
        {
            // Unlinked and closed by everyone: its pending data can never be synced.
            self.pending.remove(&open.ino);
        }
    }

    fn opendir(&mut self, ino: u64) -> Result<u64> {
        let rel = self.path(ino)?.to_path_buf();
        let parent = match rel.parent() {
            Some(parent) => self.inode(parent),
            None => ROOT,
        };
        let mut entries = vec![
            DirEntry {
                ino,
                kind: FileType::Directory,
                name: ".".into(),
            },
            DirEntry {
                ino: parent,
                kind: FileType::Directory,
                name: "..".into(),
            },
        ];
        for entry in fs::read_dir(self.abs(&rel))? {
            let entry = entry?;
            let kind = entry
                .file_type()
                .ok()
                .and_then(FileType::from_std)
                .unwrap_or(FileType::RegularFile);
            let name = entry.file_name();
            let ino = self.inode(&rel.join(&name));
            entries.push(DirEntry { ino, kind, name });
        }
        let fh = self.next_fh;
        self.next_fh += 1;
        self.dirs.insert(fh, entries);
        Ok(fh)
    }

    fn create(
        &mut self,
        req: &Request,
        rel: &Path,
        mode: u32,
        flags: i32,
    ) -> Result<(FileAttr, u64)> {
        self.check_space()?;
        let path = self.abs(rel);
        let mut options = OpenOptions::new();
        options.read(true).write(true).mode(mode & 0o7777);
        let file = match options.clone().create_new(true).open(&path) {
            Ok(file) => {
                // The caller owns what it creates (the daemon runs as root).
                let _ = fchown(&file, Some(req.uid()), Some(req.gid()));
                file
            }
            Err(e)
                if e.kind() == io::ErrorKind::AlreadyExists && flags & libc_flag::O_EXCL == 0 =>
            {
                let truncate = flags & libc_flag::O_TRUNC != 0;
                let file = options.truncate(truncate).open(&path)?;
                if truncate {
                    let ino = self.inode(rel);
                    self.pending.remove(&ino);
                }
                file
            }
            Err(e) => return Err(e.into()),
        };
        let ino = self.inode(rel);
        let attr = self.attr(ino, &file.metadata()?);
        let fh = self.add_file(ino, file);
        Ok((attr, fh))
    }
}

/// The `O_*` constants this file needs.
mod libc_flag {
    pub(super) const O_EXCL: i32 = nix::libc::O_EXCL;
    pub(super) const O_TRUNC: i32 = nix::libc::O_TRUNC;
}

/// The parts of a `setattr` this filesystem applies.
struct AttrChange {
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    atime: Option<TimeOrNow>,
    mtime: Option<TimeOrNow>,
}

fn errno(e: nix::errno::Errno) -> Errno {
    Errno::from_i32(e as i32)
}

fn system_time(secs: i64, nsecs: i64) -> SystemTime {
    let nanos = Duration::from_nanos(nsecs.max(0) as u64);
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64) + nanos
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + nanos
    }
}

fn time_spec(time: Option<TimeOrNow>) -> TimeSpec {
    match time {
        None => TimeSpec::UTIME_OMIT,
        Some(TimeOrNow::Now) => TimeSpec::UTIME_NOW,
        Some(TimeOrNow::SpecificTime(t)) => {
            TimeSpec::from(t.duration_since(UNIX_EPOCH).unwrap_or_default())
        }
    }
}

fn read_fully(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match file.read_at(buf, offset) {
            Ok(0) => break, // shorter than its metadata said: the rest stays zero
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Opens a backing file for reading and writing, or only reading when writing is refused.
fn open_backing(path: &Path) -> io::Result<File> {
    match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => Ok(file),
        Err(e) if matches!(e.raw_os_error(), Some(nix::libc::EACCES | nix::libc::EROFS)) => {
            File::open(path)
        }
        Err(e) => Err(e),
    }
}

/// The filesystem handed to fuser; every operation locks the shared [`State`].
pub(crate) struct FaultFs {
    pub(crate) state: Arc<Mutex<State>>,
}

impl FaultFs {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn entry_reply(reply: ReplyEntry, result: Result<FileAttr>) {
    match result {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn attr_reply(reply: ReplyAttr, result: Result<FileAttr>) {
    match result {
        Ok(attr) => reply.attr(&TTL, &attr),
        Err(e) => reply.error(e),
    }
}

fn empty_reply(reply: ReplyEmpty, result: Result<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for FaultFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut st = self.lock();
        let result = st.child(parent.0, name).and_then(|rel| st.entry(&rel));
        entry_reply(reply, result);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        attr_reply(reply, self.lock().getattr(ino.0, fh));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let change = AttrChange {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        };
        attr_reply(reply, self.lock().setattr(ino.0, fh, &change));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let st = self.lock();
        let result = st
            .path(ino.0)
            .and_then(|rel| Ok(fs::read_link(st.abs(rel))?));
        match result {
            Ok(target) => reply.data(target.as_os_str().as_encoded_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut st = self.lock();
        let result = (|| {
            st.check_space()?;
            let rel = st.child(parent.0, name)?;
            let path = st.abs(&rel);
            fs::DirBuilder::new()
                .mode(mode & !umask & 0o7777)
                .create(&path)?;
            let _ = lchown(&path, Some(req.uid()), Some(req.gid()));
            st.entry(&rel)
        })();
        entry_reply(reply, result);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = self.lock();
        let result = (|| {
            let rel = st.child(parent.0, name)?;
            fs::remove_file(st.abs(&rel))?;
            st.forget_tree(&rel);
            Ok(())
        })();
        empty_reply(reply, result);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = self.lock();
        let result = (|| {
            let rel = st.child(parent.0, name)?;
            fs::remove_dir(st.abs(&rel))?;
            st.forget_tree(&rel);
            Ok(())
        })();
        empty_reply(reply, result);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let mut st = self.lock();
        let result = (|| {
            st.check_space()?;
            let rel = st.child(parent.0, link_name)?;
            let path = st.abs(&rel);
            std::os::unix::fs::symlink(target, &path)?;
            let _ = lchown(&path, Some(req.uid()), Some(req.gid()));
            st.entry(&rel)
        })();
        entry_reply(reply, result);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut st = self.lock();
        let result = (|| {
            let from = st.child(parent.0, name)?;
            let to = st.child(newparent.0, newname)?;
            let (from_path, to_path) = (st.abs(&from), st.abs(&to));
            if flags.is_empty() {
                fs::rename(&from_path, &to_path)?;
            } else if flags == RenameFlags::RENAME_NOREPLACE {
                nix::fcntl::renameat2(
                    nix::fcntl::AT_FDCWD,
                    from_path.as_path(),
                    nix::fcntl::AT_FDCWD,
                    to_path.as_path(),
                    nix::fcntl::RenameFlags::RENAME_NOREPLACE,
                )
                .map_err(errno)?;
            } else {
                return Err(Errno::EINVAL);
            }
            st.moved(&from, &to);
            Ok(())
        })();
        empty_reply(reply, result);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut st = self.lock();
        let result = (|| {
            let file = open_backing(&st.abs(st.path(ino.0)?))?;
            Ok(st.add_file(ino.0, file))
        })();
        match result {
            // Direct I/O: the kernel keeps no page cache of its own that could serve data this
            // filesystem dropped; every read and write comes here.
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.lock().read(fh, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.lock().write(fh, offset, data) {
            Ok(written) => reply.written(written),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // A close persists nothing: only fsync does.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.lock().release(fh);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty_reply(reply, self.lock().fsync(fh, datasync));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.lock().opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let st = self.lock();
        let Some(entries) = st.dirs.get(&fh.0) else {
            reply.error(Errno::EBADF);
            return;
        };
        for (i, entry) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(entry.ino), i as u64 + 1, entry.kind, &entry.name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.lock().dirs.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Directory changes are applied at once; syncing the backing directory is all there is.
        let st = self.lock();
        let result = st
            .path(ino.0)
            .and_then(|rel| Ok(File::open(st.abs(rel))?.sync_all()?));
        empty_reply(reply, result);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let st = self.lock();
        match nix::sys::statvfs::statvfs(&st.root) {
            Ok(s) => {
                let (bfree, bavail, ffree) = if st.disk_full {
                    (0, 0, 0)
                } else {
                    (s.blocks_free(), s.blocks_available(), s.files_free())
                };
                reply.statfs(
                    s.blocks(),
                    bfree,
                    bavail,
                    s.files(),
                    ffree,
                    s.block_size() as u32,
                    s.name_max() as u32,
                    s.fragment_size() as u32,
                );
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Permissions are the kernel's (`default_permissions`); this only checks existence.
        empty_reply(reply, self.lock().metadata(ino.0, None).map(drop));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut st = self.lock();
        let result = st
            .child(parent.0, name)
            .and_then(|rel| st.create(req, &rel, mode & !umask, flags));
        match result {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }
}
