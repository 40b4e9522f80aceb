//! The FUSE adapter: `fuser::Filesystem` over `drive::fs::DriveFs`.
//!
//! The only place fuser types appear. Every request is answered from a task on the tokio
//! runtime, so the FUSE worker threads never wait on the metadata or object store; errors map
//! to errno in [`errno`] and nowhere else. Change-feed events of other mounts invalidate the
//! kernel's caches ([`run_invalidator`]), which gives close-to-open consistency across mounts.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use drive::fs::{BlockIo, Caller, DriveFs, FsError, FsErrorKind, OpenFlags};
use drive::meta::LockKind;
use drive::meta::xattrs::XattrMode;
use drive::model::{Attr, NewNode, NodeKind, RenameMode, SetAttr, Timestamp};
use drive::ports::Clock;
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, IoctlFlags, KernelConfig, LockOwner, Notifier, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLock, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Largest write request the kernel sends (FUSE max_write).
pub const MAX_WRITE: u32 = 1 << 20;

/// Kernel cache lifetimes.
#[derive(Debug, Clone, Copy)]
pub struct Ttls {
    pub attr: Duration,
    pub entry: Duration,
}

/// `errno` for a file-system error: the one mapping of the adapter.
pub fn errno(e: &FsError) -> Errno {
    match e.kind() {
        FsErrorKind::NotFound => Errno::ENOENT,
        FsErrorKind::Exists => Errno::EEXIST,
        FsErrorKind::NotEmpty => Errno::ENOTEMPTY,
        FsErrorKind::NotADirectory => Errno::ENOTDIR,
        FsErrorKind::IsADirectory => Errno::EISDIR,
        FsErrorKind::InvalidArgument => Errno::EINVAL,
        FsErrorKind::NameTooLong => Errno::ENAMETOOLONG,
        FsErrorKind::ReadOnly => Errno::EROFS,
        FsErrorKind::NotPermitted => Errno::EPERM,
        FsErrorKind::AccessDenied => Errno::EACCES,
        FsErrorKind::NoAttribute => Errno::from_i32(libc::ENODATA),
        FsErrorKind::NotSupported => Errno::from_i32(libc::ENOTSUP),
        FsErrorKind::BadHandle => Errno::EBADF,
        FsErrorKind::TooBig => Errno::from_i32(libc::EFBIG),
        FsErrorKind::Io => Errno::EIO,
        FsErrorKind::NoSpace => Errno::ENOSPC,
        FsErrorKind::QuotaExceeded => Errno::EDQUOT,
        FsErrorKind::Busy => Errno::from_i32(libc::EAGAIN),
        FsErrorKind::Stale => Errno::from_i32(libc::ESTALE),
    }
}

/// Logs an error once, at a level that fits its kind, and returns its errno.
fn report(op: &'static str, e: &FsError) -> Errno {
    match e.kind() {
        FsErrorKind::Io | FsErrorKind::Busy => tracing::warn!(op, error = %e, "operation failed"),
        _ => tracing::debug!(op, error = %e, "operation refused"),
    }
    errno(e)
}

/// A reply that can carry an error. fuser's reply types share `error` by name only.
trait ErrorReply {
    fn fail(self, err: Errno);
}

macro_rules! error_reply {
    ($($reply:ty),* $(,)?) => {$(
        impl ErrorReply for $reply {
            fn fail(self, err: Errno) {
                self.error(err);
            }
        }
    )*};
}

error_reply!(
    ReplyAttr,
    ReplyCreate,
    ReplyData,
    ReplyDirectory,
    ReplyDirectoryPlus,
    ReplyEmpty,
    ReplyEntry,
    ReplyLock,
    ReplyOpen,
    ReplyStatfs,
    ReplyWrite,
    ReplyXattr,
);

/// Replies with the errno of `e` (logged by [`report`]); the task's outcome is a failure.
fn failed(reply: impl ErrorReply, op: &'static str, e: &FsError) -> Result<(), ()> {
    refused(reply, report(op, e))
}

/// Replies with `err`; the task's outcome is a failure.
fn refused(reply: impl ErrorReply, err: Errno) -> Result<(), ()> {
    reply.fail(err);
    Err(())
}

/// Replies success to an operation without a payload.
fn done(reply: ReplyEmpty) -> Result<(), ()> {
    reply.ok();
    Ok(())
}

/// The FUSE face of a mounted workspace.
pub struct DriveFuse<B: BlockIo> {
    fs: Arc<DriveFs<B>>,
    rt: Handle,
    ttls: Ttls,
    metrics: Arc<Metrics>,
}

impl<B: BlockIo> DriveFuse<B> {
    pub fn new(fs: Arc<DriveFs<B>>, rt: Handle, ttls: Ttls, metrics: Arc<Metrics>) -> DriveFuse<B> {
        DriveFuse {
            fs,
            rt,
            ttls,
            metrics,
        }
    }

    /// Runs `work` on the runtime and records its latency and outcome.
    fn spawn<F>(&self, op: &'static str, work: impl FnOnce(Arc<DriveFs<B>>) -> F + Send + 'static)
    where
        F: Future<Output = Result<(), ()>> + Send + 'static,
    {
        let fs = self.fs.clone();
        let metrics = self.metrics.clone();
        let mut task = Box::pin(async move {
            let start = Instant::now();
            let ok = work(fs).await.is_ok();
            metrics.observe_op(op, ok, start.elapsed());
        });
        // Poll once here: a request answered from memory (a cached lookup or getattr, a write
        // into the staging buffer) replies without waking a runtime worker, two context
        // switches fewer. The first wait for I/O moves the task to the runtime, where it is
        // polled again with a real waker; nothing here blocks on I/O.
        let _runtime = self.rt.enter();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if task.as_mut().poll(&mut cx).is_pending() {
            self.rt.spawn(task);
        }
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn system_time(t: Timestamp) -> SystemTime {
    if t.0 >= 0 {
        UNIX_EPOCH + Duration::from_nanos(t.0 as u64)
    } else {
        UNIX_EPOCH
    }
}

/// `t`, with "now" read from the file system's clock.
fn timestamp(t: TimeOrNow, clock: &dyn Clock) -> Timestamp {
    match t {
        TimeOrNow::Now => clock.now(),
        TimeOrNow::SpecificTime(st) => {
            let nanos = st.duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
            Timestamp(i64::try_from(nanos).unwrap_or(i64::MAX))
        }
    }
}

fn file_type(kind: NodeKind) -> FileType {
    match kind {
        NodeKind::File => FileType::RegularFile,
        NodeKind::Directory => FileType::Directory,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::Fifo => FileType::NamedPipe,
        NodeKind::Socket => FileType::Socket,
        NodeKind::CharDevice => FileType::CharDevice,
        NodeKind::BlockDevice => FileType::BlockDevice,
    }
}

/// Converts our attributes to fuser's.
pub fn file_attr(a: &Attr, blksize: u32) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino.0),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: system_time(a.atime),
        mtime: system_time(a.mtime),
        ctime: system_time(a.ctime),
        crtime: system_time(a.crtime),
        kind: file_type(a.kind),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev as u32,
        blksize,
        flags: 0,
    }
}

/// The node kind a `mknod` mode asks for.
fn kind_of_mode(mode: u32) -> Option<NodeKind> {
    match mode & libc::S_IFMT {
        libc::S_IFREG | 0 => Some(NodeKind::File),
        libc::S_IFIFO => Some(NodeKind::Fifo),
        libc::S_IFSOCK => Some(NodeKind::Socket),
        libc::S_IFCHR => Some(NodeKind::CharDevice),
        libc::S_IFBLK => Some(NodeKind::BlockDevice),
        libc::S_IFDIR => Some(NodeKind::Directory),
        _ => None,
    }
}

fn blksize(fs: &DriveFs<impl BlockIo>) -> u32 {
    // Tools size their buffers by st_blksize: large I/O suits an object store, but 1 MiB is
    // the largest request the kernel sends anyway.
    fs.workspace().block_size.min(MAX_WRITE)
}

impl<B: BlockIo> Filesystem for DriveFuse<B> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(MAX_WRITE);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        // Only ask for what the kernel offers; each one is an optimisation, not a need.
        let wanted = InitFlags::FUSE_ATOMIC_O_TRUNC
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS;
        let offered = config.capabilities() & wanted;
        let _ = config.add_capabilities(offered);
        // Locks are the file system's, not each kernel's, so that they hold across mounts:
        // fcntl record locks, and flock, which reaches `setlk` as a whole-file lock owned by
        // the open file (fuser does not pass the FUSE_LK_FLOCK flag, so a flock and an fcntl
        // lock of one file by two owners exclude each other, stricter than Linux).
        let locks = InitFlags::FUSE_POSIX_LOCKS | InitFlags::FUSE_FLOCK_LOCKS;
        if config.capabilities().contains(locks) {
            let _ = config.add_capabilities(locks);
        } else {
            tracing::warn!("the kernel offers no FUSE lock requests: file locks hold within this mount only");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let ttls = self.ttls;
        // A metadata-cache hit is answered here, without a hop to the runtime.
        let start = Instant::now();
        if let Some(answer) = self.fs.lookup_cached(parent.0, name.as_bytes()) {
            let ok = match answer {
                Ok(a) => {
                    reply.entry(&ttls.entry, &file_attr(&a, blksize(&self.fs)), Generation(0));
                    true
                }
                Err(e) => failed(reply, "lookup", &e).is_ok(),
            };
            self.metrics.observe_op("lookup", ok, start.elapsed());
            return;
        }
        let name = name.as_bytes().to_vec();
        self.spawn("lookup", move |fs| async move {
            match fs.lookup_in_store(parent.0, &name).await {
                Ok(a) => {
                    reply.entry(&ttls.entry, &file_attr(&a, blksize(&fs)), Generation(0));
                    Ok(())
                }
                Err(e) => failed(reply, "lookup", &e),
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let ttls = self.ttls;
        let start = Instant::now();
        if let Some(a) = self.fs.getattr_cached(ino.0) {
            reply.attr(&ttls.attr, &file_attr(&a, blksize(&self.fs)));
            self.metrics.observe_op("getattr", true, start.elapsed());
            return;
        }
        self.spawn("getattr", move |fs| async move {
            match fs.getattr_in_store(ino.0).await {
                Ok(a) => {
                    reply.attr(&ttls.attr, &file_attr(&a, blksize(&fs)));
                    Ok(())
                }
                Err(e) => failed(reply, "getattr", &e),
            }
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let change = SetAttr {
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: atime.map(|t| timestamp(t, &*self.fs.config().clock)),
            mtime: mtime.map(|t| timestamp(t, &*self.fs.config().clock)),
        };
        let (ttls, who) = (self.ttls, caller(req));
        self.spawn("setattr", move |fs| async move {
            match fs.setattr(ino.0, change, who).await {
                Ok(a) => {
                    reply.attr(&ttls.attr, &file_attr(&a, blksize(&fs)));
                    Ok(())
                }
                Err(e) => failed(reply, "setattr", &e),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.spawn("readlink", move |fs| async move {
            match fs.readlink(ino.0).await {
                Ok(t) => {
                    reply.data(&t);
                    Ok(())
                }
                Err(e) => failed(reply, "readlink", &e),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let Some(kind) = kind_of_mode(mode) else {
            reply.error(Errno::EINVAL);
            return;
        };
        let who = caller(req);
        let mut node = NewNode::new(kind, mode & 0o7777).owned_by(who.uid, who.gid);
        node.rdev = u64::from(rdev);
        let (name, ttls) = (name.as_bytes().to_vec(), self.ttls);
        self.spawn("mknod", move |fs| async move {
            match fs.make_node(parent.0, &name, node, who).await {
                Ok(a) => {
                    reply.entry(&ttls.entry, &file_attr(&a, blksize(&fs)), Generation(0));
                    Ok(())
                }
                Err(e) => failed(reply, "mknod", &e),
            }
        });
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        let (name, ttls, who) = (name.as_bytes().to_vec(), self.ttls, caller(req));
        self.spawn("mkdir", move |fs| async move {
            match fs.mkdir(parent.0, &name, mode, who).await {
                Ok(a) => {
                    reply.entry(&ttls.entry, &file_attr(&a, blksize(&fs)), Generation(0));
                    Ok(())
                }
                Err(e) => failed(reply, "mkdir", &e),
            }
        });
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (name, who) = (name.as_bytes().to_vec(), caller(req));
        self.spawn("unlink", move |fs| async move {
            match fs.unlink(parent.0, &name, who).await {
                Ok(()) => done(reply),
                Err(e) => failed(reply, "unlink", &e),
            }
        });
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (name, who) = (name.as_bytes().to_vec(), caller(req));
        self.spawn("rmdir", move |fs| async move {
            match fs.rmdir(parent.0, &name, who).await {
                Ok(()) => done(reply),
                Err(e) => failed(reply, "rmdir", &e),
            }
        });
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let (name, target) = (
            link_name.as_bytes().to_vec(),
            target.as_os_str().as_bytes().to_vec(),
        );
        let (ttls, who) = (self.ttls, caller(req));
        self.spawn("symlink", move |fs| async move {
            match fs.symlink(parent.0, &name, &target, who).await {
                Ok(a) => {
                    reply.entry(&ttls.entry, &file_attr(&a, blksize(&fs)), Generation(0));
                    Ok(())
                }
                Err(e) => failed(reply, "symlink", &e),
            }
        });
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mode = if flags.contains(RenameFlags::RENAME_WHITEOUT) {
            reply.error(Errno::EINVAL);
            return;
        } else if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            RenameMode::Exchange
        } else if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            RenameMode::NoReplace
        } else {
            RenameMode::Replace
        };
        let (name, newname, who) = (name.as_bytes().to_vec(), newname.as_bytes().to_vec(), caller(req));
        self.spawn("rename", move |fs| async move {
            match fs.rename(parent.0, &name, newparent.0, &newname, mode, who).await {
                Ok(()) => done(reply),
                Err(e) => failed(reply, "rename", &e),
            }
        });
    }

    fn link(&self, req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let (name, ttls, who) = (newname.as_bytes().to_vec(), self.ttls, caller(req));
        self.spawn("link", move |fs| async move {
            match fs.link(ino.0, newparent.0, &name, who).await {
                Ok(a) => {
                    reply.entry(&ttls.entry, &file_attr(&a, blksize(&fs)), Generation(0));
                    Ok(())
                }
                Err(e) => failed(reply, "link", &e),
            }
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: fuser::OpenFlags, reply: ReplyOpen) {
        let (flags, who) = (OpenFlags::from_libc(flags.0), caller(req));
        self.spawn("open", move |fs| async move {
            match fs.open(ino.0, flags, who).await {
                Ok(o) => {
                    let f = if o.keep_cache {
                        FopenFlags::FOPEN_KEEP_CACHE
                    } else {
                        FopenFlags::empty()
                    };
                    reply.opened(FileHandle(o.fh), f);
                    Ok(())
                }
                Err(e) => failed(reply, "open", &e),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: fuser::OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let metrics = self.metrics.clone();
        self.spawn("read", move |fs| async move {
            match fs.read(fh.0, offset, size).await {
                Ok(data) => {
                    metrics.read_bytes.inc_by(data.len() as u64);
                    reply.data(&data);
                    Ok(())
                }
                Err(e) => failed(reply, "read", &e),
            }
        });
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let who = caller(req);
        self.spawn("fallocate", move |fs| async move {
            match fs.allocate(ino.0, fh.0, offset, length, mode, who).await {
                Ok(()) => done(reply),
                Err(e) => failed(reply, "fallocate", &e),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: fuser::OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = data.to_vec();
        let metrics = self.metrics.clone();
        self.spawn("write", move |fs| async move {
            match fs.write(fh.0, offset, &data).await {
                Ok(n) => {
                    metrics.write_bytes.inc_by(u64::from(n));
                    reply.written(n);
                    Ok(())
                }
                Err(e) => failed(reply, "write", &e),
            }
        });
    }

    fn flush(&self, req: &Request, ino: INodeNo, fh: FileHandle, lock_owner: LockOwner, reply: ReplyEmpty) {
        let who = caller(req);
        self.spawn("flush", move |fs| async move {
            // A close by an owner ends its record locks on the file (POSIX), whatever the
            // commit's outcome.
            let unlocked = fs.release_locks(ino.0, lock_owner.0).await;
            if let Err(e) = &unlocked {
                tracing::warn!(error = %e, "could not release file locks at close; they last until the lease expires");
            }
            match fs.flush(fh.0, who).await {
                Ok(()) => done(reply),
                Err(e) => failed(reply, "flush", &e),
            }
        });
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        self.spawn("getlk", move |fs| async move {
            let Some(kind) = lock_kind(typ) else {
                return refused(reply, Errno::EINVAL);
            };
            match fs.getlk(ino.0, lock_owner.0, start, end, kind, pid).await {
                Ok(None) => {
                    reply.locked(start, end, libc::F_UNLCK, 0);
                    Ok(())
                }
                Ok(Some(holder)) => {
                    let typ = if holder.kind == LockKind::Exclusive {
                        libc::F_WRLCK
                    } else {
                        libc::F_RDLCK
                    };
                    reply.locked(holder.start, holder.end, typ, holder.pid);
                    Ok(())
                }
                Err(e) => failed(reply, "getlk", &e),
            }
        });
    }

    fn setlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn("setlk", move |fs| async move {
            let Some(kind) = lock_kind(typ) else {
                return refused(reply, Errno::EINVAL);
            };
            match fs
                .setlk(fh.0, ino.0, lock_owner.0, start, end, kind, pid, sleep)
                .await
            {
                Ok(()) => done(reply),
                Err(e) => failed(reply, "setlk", &e),
            }
        });
    }

    fn release(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: fuser::OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let who = caller(req);
        self.spawn("release", move |fs| async move {
            // The last close of an open file ends its flock and OFD locks.
            if let Err(e) = fs.release_handle_locks(fh.0, ino.0).await {
                tracing::warn!(error = %e, "could not release the open file's locks at its last close; they last until the lease expires");
            }
            match fs.release(fh.0, who).await {
                Ok(()) => done(reply),
                Err(e) => failed(reply, "release", &e),
            }
        });
    }

    fn fsync(&self, req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let who = caller(req);
        self.spawn("fsync", move |fs| async move {
            match fs.fsync(fh.0, who).await {
                Ok(()) => done(reply),
                Err(e) => failed(reply, "fsync", &e),
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: fuser::OpenFlags, reply: ReplyOpen) {
        self.spawn("opendir", move |fs| async move {
            match fs.opendir(ino.0).await {
                Ok(fh) => {
                    reply.opened(FileHandle(fh), FopenFlags::empty());
                    Ok(())
                }
                Err(e) => failed(reply, "opendir", &e),
            }
        });
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        self.spawn("readdir", move |fs| async move {
            match fs.readdir(fh.0, offset).await {
                Ok(items) => {
                    for item in items {
                        let kind = file_type(item.attr.kind);
                        if reply.add(
                            INodeNo(item.attr.ino.0),
                            item.offset,
                            kind,
                            OsStr::from_bytes(&item.name),
                        ) {
                            break;
                        }
                    }
                    reply.ok();
                    Ok(())
                }
                Err(e) => failed(reply, "readdir", &e),
            }
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let ttls = self.ttls;
        self.spawn("readdirplus", move |fs| async move {
            match fs.readdir(fh.0, offset).await {
                Ok(items) => {
                    let bs = blksize(&fs);
                    for item in items {
                        let attr = file_attr(&item.attr, bs);
                        let name = OsStr::from_bytes(&item.name);
                        if reply.add(attr.ino, item.offset, name, &ttls.entry, &attr, Generation(0)) {
                            break;
                        }
                    }
                    reply.ok();
                    Ok(())
                }
                Err(e) => failed(reply, "readdirplus", &e),
            }
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: fuser::OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    /// No ioctls: ENOTTY, quietly (every buffered `open` in Python or libc asks whether the
    /// file is a terminal; fuser's default logs a warning each time).
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::from_i32(libc::ENOTTY));
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // Namespace changes are committed before their reply, except queued removals.
        self.spawn("fsyncdir", move |fs| async move {
            match fs.fsyncdir().await {
                Ok(()) => done(reply),
                Err(e) => failed(reply, "fsyncdir", &e),
            }
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.spawn("statfs", move |fs| async move {
            match fs.statfs().await {
                Ok(s) => {
                    reply.statfs(
                        s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
                    );
                    Ok(())
                }
                Err(e) => failed(reply, "statfs", &e),
            }
        });
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let mode = if flags & libc::XATTR_CREATE != 0 {
            XattrMode::Create
        } else if flags & libc::XATTR_REPLACE != 0 {
            XattrMode::Replace
        } else {
            XattrMode::Upsert
        };
        let (name, value, who) = (name.as_bytes().to_vec(), value.to_vec(), caller(req));
        self.spawn("setxattr", move |fs| async move {
            match fs.setxattr(ino.0, &name, &value, mode, who).await {
                Ok(()) => done(reply),
                // XATTR_REPLACE of a missing attribute is ENODATA, not ENOENT.
                Err(e) if e.kind() == FsErrorKind::NotFound && mode == XattrMode::Replace => {
                    refused(reply, Errno::from_i32(libc::ENODATA))
                }
                Err(e) => failed(reply, "setxattr", &e),
            }
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if let Some(e) = self.fs.getxattr_unstored(name.as_bytes()) {
            let start = Instant::now();
            let _ = failed(reply, "getxattr", &e);
            self.metrics.observe_op("getxattr", false, start.elapsed());
            return;
        }
        let name = name.as_bytes().to_vec();
        self.spawn("getxattr", move |fs| async move {
            match fs.getxattr(ino.0, &name).await {
                Ok(v) => {
                    reply_xattr(reply, &v, size);
                    Ok(())
                }
                Err(e) => failed(reply, "getxattr", &e),
            }
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.spawn("listxattr", move |fs| async move {
            match fs.listxattr(ino.0).await {
                Ok(names) => {
                    let mut buf = Vec::new();
                    for n in names {
                        buf.extend_from_slice(&n);
                        buf.push(0);
                    }
                    reply_xattr(reply, &buf, size);
                    Ok(())
                }
                Err(e) => failed(reply, "listxattr", &e),
            }
        });
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (name, who) = (name.as_bytes().to_vec(), caller(req));
        self.spawn("removexattr", move |fs| async move {
            match fs.removexattr(ino.0, &name, who).await {
                Ok(()) => done(reply),
                Err(e) => failed(reply, "removexattr", &e),
            }
        });
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let who = caller(req);
        self.spawn("access", move |fs| async move {
            match fs.access(ino.0, mask.bits(), who).await {
                Ok(()) => done(reply),
                Err(e) => failed(reply, "access", &e),
            }
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (name, ttls, who) = (name.as_bytes().to_vec(), self.ttls, caller(req));
        let flags = OpenFlags::from_libc(flags);
        self.spawn("create", move |fs| async move {
            match fs.create(parent.0, &name, mode, flags, who).await {
                Ok(o) => {
                    let attr = file_attr(&o.attr, blksize(&fs));
                    reply.created(
                        &ttls.entry,
                        &attr,
                        Generation(0),
                        FileHandle(o.fh),
                        FopenFlags::empty(),
                    );
                    Ok(())
                }
                Err(e) => failed(reply, "create", &e),
            }
        });
    }
}

/// `getxattr`/`listxattr` size protocol: 0 asks for the size; too small is ERANGE.
fn reply_xattr(reply: ReplyXattr, value: &[u8], size: u32) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(value);
    }
}

/// The lock request of an fcntl/flock type.
fn lock_kind(typ: i32) -> Option<LockKind> {
    match typ {
        libc::F_RDLCK => Some(LockKind::Shared),
        libc::F_WRLCK => Some(LockKind::Exclusive),
        libc::F_UNLCK => Some(LockKind::Unlock),
        _ => None,
    }
}

/// Follows the workspace's change feed (its own events only, and a turn at advancing the
/// feed's horizon) and invalidates the mount's metadata cache and the kernel's caches for
/// other mounts' changes, until `cancel` fires. Polling every `interval` bounds how stale
/// another mount's view can be after a close (close-to-open across mounts); while polls fail,
/// the metadata cache stops answering once its staleness bound passes.
pub async fn run_invalidator<B: BlockIo>(
    fs: Arc<DriveFs<B>>,
    notifier: Notifier,
    interval: Duration,
    cancel: CancellationToken,
) {
    let ws = fs.workspace().id;
    let mut feed = loop {
        match drive::meta::WorkspaceFeed::from_now(fs.meta(), ws).await {
            Ok(feed) => break feed,
            Err(e) => {
                tracing::warn!(error = %e, "change feed unavailable; retrying");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(interval * 5) => {}
                }
            }
        }
    };
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let poll_started = Instant::now();
        let mut changes = match feed.poll(fs.meta()).await {
            Ok(events) => fs.apply_feed(&events, poll_started),
            Err(e) => {
                tracing::warn!(error = %e, "change feed poll failed");
                drive::fs::Invalidations::default()
            }
        };
        // What this mount's failed commits dropped goes out even while the feed is down.
        let dropped = fs.take_dropped();
        changes.inodes.extend(dropped.inodes);
        changes.entries.extend(dropped.entries);
        let drive::fs::Invalidations { inodes, entries } = changes;
        if inodes.is_empty() && entries.is_empty() {
            continue;
        }
        let notifier = notifier.clone();
        // The notifications are writes to /dev/fuse that may wait on the kernel: keep them off
        // the runtime's worker threads.
        let _ = tokio::task::spawn_blocking(move || {
            for (parent, name) in entries {
                let _ = notifier.inval_entry(INodeNo(parent), OsStr::from_bytes(&name));
            }
            for ino in inodes {
                // Length 0 means "to the end of the file": attributes and page cache both go.
                let _ = notifier.inval_inode(INodeNo(ino), 0, 0);
            }
        })
        .await;
    }
}
