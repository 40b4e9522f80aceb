//! Open files: open/create, read, write, flush, fsync and release.
//!
//! Durability contract: `flush` (every `close(2)`), `fsync` and `release` commit the file's
//! write session; when they return `Ok` the bytes are in the object store and the new block
//! map, size and mtime are committed in the metadata store.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::error::ErrorKind;
use crate::fs::Pending;
use crate::fs::blocks::BlockIo;
use crate::fs::error::{FsError, FsErrorKind};
use crate::fs::namespace::parse_name;
use crate::fs::write::{DeferredCreate, WriteSession, range_end};
use crate::fs::{Caller, DriveFs, Handle, OpenFlags, Opened, lock};
use crate::meta::new_inode_attr;
use crate::model::{Attr, NewNode, NodeId, NodeKind};
use crate::ports::MetaStore;
use crate::rules::write_once;

impl<B: BlockIo, M: MetaStore> DriveFs<B, M> {
    /// Opens file `ino`.
    pub async fn open(&self, ino: u64, flags: OpenFlags, caller: Caller) -> Result<Opened, FsError> {
        self.readable()?;
        // The kernel opens by an inode its cached entry names. If that node is gone (another
        // mount removed it, or a new file's first commit failed here), ESTALE makes the
        // kernel look the name up again, so `open(O_CREAT)` creates the file instead of
        // failing with ENOENT on an entry that no longer exists.
        let attr = self
            .fresh_attr(self.to_node(ino))
            .await
            .map_err(|e| match e.kind() {
                FsErrorKind::NotFound => FsError::new(FsErrorKind::Stale, format!("inode {ino} is gone")),
                _ => e,
            })?;
        self.open_node(attr, flags, None, caller).await
    }

    /// Creates regular file `name` in `parent` and opens it.
    pub async fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: OpenFlags,
        caller: Caller,
    ) -> Result<Opened, FsError> {
        self.writable()?;
        let name = parse_name(name)?;
        let node = NewNode::new(NodeKind::File, mode & 0o7777).owned_by(caller.uid, caller.gid);
        // A new file is empty: truncating it again would only cost a commit.
        let flags = OpenFlags {
            truncate: false,
            ..flags
        };
        if !flags.write {
            let attr = self.create_entry(parent, &name, &node, caller).await?;
            return self.open_node(attr, flags, None, caller).await;
        }
        // Opened for writing: the create is deferred to the first commit of the file's
        // session (see `write::DeferredCreate`). The name must be free here and in the store
        // (the kernel looked it up just before, so this is normally a cache hit).
        match self.lookup(parent, name.as_bytes()).await {
            Ok(_) => return Err(FsError::new(FsErrorKind::Exists, name.to_string_lossy())),
            Err(e) if e.kind() == FsErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // A queued removal of this name (`rm f; cp g f`) must land before the create does.
        let meta = self.settled(Pending::Removals).await?;
        let parent = self.to_node(parent);
        let dir = self.stored_attr(parent).await?;
        if dir.kind != NodeKind::Directory {
            return Err(FsError::new(FsErrorKind::NotADirectory, format!("node {parent}")));
        }
        let now = self.cfg.clock.now();
        let attr = new_inode_attr(meta.reserve_node_id().await?, &node, now);
        let create = DeferredCreate {
            parent,
            name: name.clone(),
            node,
            actor: self.actor(caller),
            attr: attr.clone(),
        };
        lock(&self.deferred_names).insert((parent, name.clone()), attr.ino);
        self.cache.set_entry(parent, &name, &attr);
        self.cache.touch_dir(parent, now);
        let opened = self.open_node(attr.clone(), flags, Some(create), caller).await;
        if opened.is_err() {
            lock(&self.deferred_names).remove(&(parent, name.clone()));
            self.cache.forget_entry(parent, &name);
        }
        opened
    }

    async fn open_node(
        &self,
        attr: Attr,
        flags: OpenFlags,
        deferred: Option<DeferredCreate>,
        caller: Caller,
    ) -> Result<Opened, FsError> {
        match attr.kind {
            NodeKind::File => {}
            NodeKind::Directory => {
                return Err(FsError::new(
                    FsErrorKind::IsADirectory,
                    format!("node {}", attr.ino),
                ));
            }
            // FIFOs, sockets and devices are metadata-only: the kernel never opens them here.
            _ => return Err(FsError::new(FsErrorKind::NotSupported, "not a regular file")),
        }
        let node = attr.ino;
        // A new file's creation time is its first use; its node is not in the store yet.
        let is_new = deferred.is_some();
        let session = if flags.write || flags.truncate {
            self.writable()?;
            // Refused here, not at close: nothing may be staged for a file that cannot change.
            write_once::open(self.ws.kind, &attr, flags.write, flags.truncate)?;
            let session = self.join_session(&attr, deferred)?;
            if flags.truncate
                && let Err(e) = session.truncate(0).await
            {
                self.leave_session(node, caller).await.ok();
                return Err(e);
            }
            Some(session)
        } else {
            None
        };
        if !is_new {
            self.note_access(node);
        }
        let keep_cache = self.note_seen(node, attr.content_version) && session.is_none();
        let reader = self.reader(node, attr.size);
        let handle = Arc::new(Handle {
            ino: node,
            flags,
            reader: tokio::sync::Mutex::new(Some(reader)),
            failures_seen: session.as_ref().map_or(0, |s| s.failures()),
            session,
        });
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, handle);
        Ok(Opened {
            fh,
            attr: self.outer(attr),
            keep_cache,
        })
    }

    /// The write session of `attr`'s file, created if this mount has none.
    fn join_session(
        &self,
        attr: &Attr,
        deferred: Option<DeferredCreate>,
    ) -> Result<Arc<WriteSession<B, M>>, FsError> {
        let mut sessions = lock(&self.sessions);
        if let Some((s, users)) = sessions.get_mut(&attr.ino) {
            *users += 1;
            return Ok(s.clone());
        }
        let session = Arc::new(WriteSession::new(
            self.env.clone(),
            attr,
            &self.cfg.staging_dir,
            deferred,
        )?);
        sessions.insert(attr.ino, (session.clone(), 1));
        Ok(session)
    }

    /// Drops one user of `node`'s session; the last one commits and removes it.
    async fn leave_session(&self, node: NodeId, caller: Caller) -> Result<(), FsError> {
        let last = {
            let mut sessions = lock(&self.sessions);
            match sessions.get_mut(&node) {
                Some((s, users)) => {
                    *users -= 1;
                    (*users == 0).then(|| s.clone())
                }
                None => None,
            }
        };
        let Some(session) = last else { return Ok(()) };
        // Commit while the session is still registered, so an open racing with this release
        // joins it instead of starting from content that is about to change.
        let result = self.commit_session(&session, caller).await;
        let mut sessions = lock(&self.sessions);
        if sessions.get(&node).is_some_and(|(_, users)| *users == 0) {
            sessions.remove(&node);
        }
        result
    }

    /// Commits a session. A file deleted meanwhile has nowhere to commit to: its bytes are
    /// unreachable, so that is not an error for the closing process.
    pub(crate) async fn commit_session(
        &self,
        session: &WriteSession<B, M>,
        caller: Caller,
    ) -> Result<(), FsError> {
        let result = session.commit(&self.actor(caller)).await;
        if result
            .as_ref()
            .is_err_and(|e| e.kind() == FsErrorKind::QuotaExceeded)
        {
            // The figures this mount holds let the commit try: read them again.
            self.forget_usage();
        }
        if result.is_err() {
            // The commit dropped the changes (see `write`): cached attributes and the kernel's
            // pages may still show them.
            let node = session.node();
            self.touched(&[node]);
            lock(&self.seen_versions).remove(&node);
            // A new file whose first commit failed is not created: its name is free again.
            let abandoned = session.take_abandoned_create();
            if let Some(create) = &abandoned {
                lock(&self.deferred_names).remove(&(create.parent, create.name.clone()));
                self.cache.forget_entry(create.parent, &create.name);
                self.touched(&[create.parent]);
            }
            self.note_dropped(node, abandoned.as_ref().map(|c| (c.parent, &c.name)));
        }
        match result {
            Ok(Some(committed)) => self.note_committed(&committed),
            Ok(None) => Ok(()),
            Err(FsError::Meta(e)) if e.kind() == ErrorKind::NotFound => {
                tracing::debug!(error = %e, "file removed before its content was committed");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Reads up to `len` bytes at `offset`.
    pub async fn read(&self, fh: u64, offset: u64, len: u32) -> Result<Bytes, FsError> {
        let handle = self.handle(fh)?;
        if let Some(session) = self.session_of(handle.ino) {
            return Ok(Bytes::from(session.read(offset, u64::from(len)).await?));
        }
        let mut reader = handle.reader.lock().await;
        match reader.as_mut() {
            Some(r) => r.read(offset, u64::from(len)).await,
            None => Err(FsError::new(FsErrorKind::BadHandle, "handle is closed")),
        }
    }

    /// Writes `data` at `offset` (at the end for O_APPEND handles); returns bytes written.
    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, FsError> {
        let handle = self.handle(fh)?;
        let session = Self::writing_session(&handle)?;
        Self::lost_writes(&handle)?;
        let headroom = self.quota_headroom().await;
        match session.write(offset, data, handle.flags.append, headroom).await {
            // Refused on figures up to USAGE_TTL old: space freed since then counts, so the
            // refusal stands only on fresh ones (nothing was staged).
            Err(e) if e.kind() == FsErrorKind::QuotaExceeded => {
                self.forget_usage();
                let headroom = self.quota_headroom().await;
                session.write(offset, data, handle.flags.append, headroom).await?;
            }
            written => {
                written?;
            }
        }
        Ok(data.len() as u32)
    }

    /// `fallocate(2)` through handle `fh` of `ino`. Blocks are stored when written, so there
    /// is no space to reserve: the default mode extends the file to `offset + len` as
    /// `ftruncate` would (a hole, read as zeros; `posix_fallocate` then returns at once instead
    /// of writing a zero into every 4 KiB of the range), and `FALLOC_FL_KEEP_SIZE` changes
    /// nothing. Punching holes, zeroing, collapsing or inserting ranges is refused
    /// (EOPNOTSUPP), as is a handle not open for writing (EBADF).
    pub async fn allocate(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        len: u64,
        mode: i32,
        caller: Caller,
    ) -> Result<(), FsError> {
        /// `FALLOC_FL_KEEP_SIZE` of linux/falloc.h.
        const KEEP_SIZE: i32 = 0x01;
        Self::writing_session(&*self.handle(fh)?)?;
        if mode & !KEEP_SIZE != 0 {
            return Err(FsError::new(
                FsErrorKind::NotSupported,
                format!("fallocate mode {mode:#x}: only preallocation is supported"),
            ));
        }
        let end = range_end(offset, len, "fallocate")?;
        if mode & KEEP_SIZE != 0 || end <= self.getattr(ino).await?.size {
            return Ok(());
        }
        let grow = crate::model::SetAttr {
            size: Some(end),
            ..Default::default()
        };
        self.setattr(ino, grow, caller).await.map(|_| ())
    }

    /// The write session of `handle`; EBADF for a handle not open for writing (one opened
    /// read-only with O_TRUNC has a session too).
    fn writing_session(handle: &Handle<B, M>) -> Result<&Arc<WriteSession<B, M>>, FsError> {
        handle
            .session
            .as_ref()
            .filter(|_| handle.flags.write)
            .ok_or_else(|| FsError::new(FsErrorKind::BadHandle, "handle is not open for writing"))
    }

    /// `close(2)` of one descriptor: commits the file's staged content.
    pub async fn flush(&self, fh: u64, caller: Caller) -> Result<(), FsError> {
        let handle = self.handle(fh)?;
        Self::lost_writes(&handle)?;
        match &handle.session {
            Some(session) => self.commit_session(session, caller).await,
            None => Ok(()),
        }
    }

    /// Fails once a commit of the handle's file failed while the handle was open: what was
    /// written through it may be gone, so its every later write, flush, fsync and release
    /// says so (an error that sticks, unlike the "fsyncgate" behaviour of reporting it once
    /// and then returning 0). Handles opened after the failure start clean.
    fn lost_writes(handle: &Handle<B, M>) -> Result<(), FsError> {
        match &handle.session {
            Some(session) if session.failures() > handle.failures_seen => Err(FsError::new(
                FsErrorKind::Io,
                "a commit of this file failed while this descriptor was open: \
                 the writes not yet committed were lost",
            )),
            _ => Ok(()),
        }
    }

    /// `fsync(2)`: the same commit as flush.
    pub async fn fsync(&self, fh: u64, caller: Caller) -> Result<(), FsError> {
        self.flush(fh, caller).await
    }

    /// The last close of a handle.
    pub async fn release(&self, fh: u64, caller: Caller) -> Result<(), FsError> {
        let Some(handle) = lock(&self.handles).remove(&fh) else {
            return Ok(());
        };
        handle.reader.lock().await.take();
        if handle.session.is_some() {
            let lost = Self::lost_writes(&handle);
            self.leave_session(handle.ino, caller).await?;
            lost?;
        }
        Ok(())
    }
}
