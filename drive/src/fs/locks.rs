//! File locks of a mount, kept in the metadata store (see `meta::locks`) so that they hold
//! across mounts. This mount remembers which (file, owner) pairs it locked, so a close that
//! holds no lock costs no round trip, and renews its lease while it holds any.

use std::time::Duration;

use crate::fs::error::{FsError, FsErrorKind};
use crate::fs::{BlockIo, DriveFs, lock};
use crate::meta::{FileLock, LockKind};
use crate::ports::MetaStore;

/// Longest pause between two tries of a blocking lock request.
const MAX_WAIT_STEP: Duration = Duration::from_millis(500);

impl<B: BlockIo, M: MetaStore> DriveFs<B, M> {
    fn file_lock(&self, ino: u64, owner: u64, start: u64, end: u64, kind: LockKind, pid: u32) -> FileLock {
        FileLock {
            ino: self.to_node(ino),
            mount: self.cfg.mount_id.clone(),
            owner,
            start,
            end,
            kind,
            pid,
        }
    }

    /// F_GETLK: the lock of another owner, on any live mount, that would refuse this one.
    pub async fn getlk(
        &self,
        ino: u64,
        owner: u64,
        start: u64,
        end: u64,
        kind: LockKind,
        pid: u32,
    ) -> Result<Option<FileLock>, FsError> {
        let wanted = self.file_lock(ino, owner, start, end, kind, pid);
        Ok(self.unsettled().test_lock(&wanted).await?)
    }

    /// F_SETLK, F_SETLKW, flock: takes, changes or releases a lock for `owner` through open
    /// file `fh`. Refused with EAGAIN while another owner holds a conflicting lock; with
    /// `wait`, tried again (backing off up to 500 ms) until it is free or `fh` is closed.
    #[allow(clippy::too_many_arguments)]
    pub async fn setlk(
        &self,
        fh: u64,
        ino: u64,
        owner: u64,
        start: u64,
        end: u64,
        kind: LockKind,
        pid: u32,
        wait: bool,
    ) -> Result<(), FsError> {
        let wanted = self.file_lock(ino, owner, start, end, kind, pid);
        let open = || lock(&self.handles).contains_key(&fh);
        let closed = || {
            FsError::new(
                FsErrorKind::BadHandle,
                "the file was closed while waiting for its lock",
            )
        };
        let mut pause = Duration::from_millis(10);
        loop {
            // A waiter whose process died (its close released the owner's locks) must not
            // take the lock afterwards: checked before each try and after the last.
            if !open() {
                return Err(closed());
            }
            if kind != LockKind::Unlock {
                // Recorded before the store has it, so a close racing with this request
                // always looks for the lock.
                lock(&self.held_locks).insert((wanted.ino, owner));
                lock(&self.handle_lock_owners)
                    .entry(fh)
                    .or_default()
                    .insert(owner);
            }
            match self.unsettled().set_lock(&wanted, self.cfg.lock_lease).await? {
                None if open() || kind == LockKind::Unlock => return Ok(()),
                None => {
                    lock(&self.handle_lock_owners).remove(&fh);
                    self.release_locks(ino, owner).await?;
                    return Err(closed());
                }
                Some(holder) if !wait => {
                    return Err(FsError::new(
                        FsErrorKind::Busy,
                        format!(
                            "bytes {}..={} are locked by pid {} on mount {}",
                            holder.start, holder.end, holder.pid, holder.mount
                        ),
                    ));
                }
                Some(_) => {}
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_WAIT_STEP);
        }
    }

    /// Releases the locks `owner` holds on `ino` (POSIX record locks go with the owner's
    /// first close of the file; flock locks with the last close of the open file). No round
    /// trip when this mount never locked it for that owner.
    pub async fn release_locks(&self, ino: u64, owner: u64) -> Result<(), FsError> {
        let node = self.to_node(ino);
        if !lock(&self.held_locks).contains(&(node, owner)) {
            return Ok(());
        }
        self.unsettled()
            .release_locks(node, &self.cfg.mount_id, owner)
            .await?;
        lock(&self.held_locks).remove(&(node, owner));
        Ok(())
    }

    /// The last close of open file `fh`: releases the locks of every owner that locked
    /// through it. That ends its flock locks and its open-file-description (OFD) locks, whose
    /// owner is the open file. The kernel names the owner only for flock, and sends nothing
    /// for OFD locks, because with FUSE_POSIX_LOCKS it keeps no record lock of its own to
    /// remove. A process's record locks taken through `fh` are already gone: its close of the
    /// descriptor flushed them first.
    pub async fn release_handle_locks(&self, fh: u64, ino: u64) -> Result<(), FsError> {
        let owners = lock(&self.handle_lock_owners).remove(&fh).unwrap_or_default();
        for owner in owners {
            self.release_locks(ino, owner).await?;
        }
        Ok(())
    }

    /// Renews the mount's lock lease while it holds locks, until `stop`; then gives the
    /// lease and every lock up.
    pub async fn run_lock_lease(&self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let every = self.cfg.lock_lease / 3;
        loop {
            tokio::select! {
                () = &mut stop => break,
                () = tokio::time::sleep(every) => {}
            }
            if lock(&self.held_locks).is_empty() {
                continue;
            }
            if let Err(e) = self
                .unsettled()
                .renew_mount_lease(&self.cfg.mount_id, self.cfg.lock_lease)
                .await
            {
                tracing::warn!(error = %e, "could not renew the lock lease; locks are lost if it expires");
            }
        }
        if !lock(&self.held_locks).is_empty()
            && let Err(e) = self.unsettled().drop_mount_lease(&self.cfg.mount_id).await
        {
            tracing::warn!(error = %e, "could not give up the lock lease; its locks last until it expires");
        }
    }
}
