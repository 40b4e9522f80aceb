//! Write-behind removals: `unlink` of a file the mount knows returns once queued, and a
//! committer applies the queue in order, many removals per transaction.
//!
//! Why: a metadata transaction with its WAL flush costs about 0.5 ms on our 2-vCPU machine,
//! and `rm` of many files sends one unlink after another, each waiting for its reply, so
//! synchronous unlinks cannot go faster than one transaction each. A local file system
//! answers `unlink` from memory and journals it later; this does the same, with these rules:
//!
//! - only removals the mount can decide alone are queued: the metadata cache knows the entry
//!   and its node is not a directory, and the workspace is not write-once. Anything else is
//!   removed synchronously, with its exact error;
//! - this mount never sees a queued removal out of order: every other namespace change,
//!   every lookup and attribute read that goes to the store, directory listings, the
//!   sequence summary, `fsyncdir` and unmount first wait until the queue is committed
//!   ([`Removals::drain`]). Reads of a node's own data (content, xattrs, symlink target) do
//!   not wait: a removal does not change them. Queued names read as absent from the cache;
//! - each item names the node it expects, so a name another mount re-created meanwhile is
//!   left alone (the removal is skipped and the cache forgets the name);
//! - durability: queued removals are committed within a few milliseconds; `fsync` of the
//!   directory or unmount waits for them. A mount killed in between loses the removals still
//!   queued (the files are back), as a local file system loses the last moments before a
//!   crash. File contents keep their close-to-open durability;
//! - while the metadata store is unreachable the committer retries and `drain` reports the
//!   error, so the operations behind it fail instead of running out of order, and new
//!   unlinks take the synchronous path (and fail the same way); the queue is bounded: a full
//!   queue makes `unlink` wait for room.
//!
//! Without a running committer (a `DriveFs` used directly, as in tests) nothing is queued.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::fs::lock;
use crate::meta::QueuedUnlink;

/// Removals queued at most; beyond this `unlink` is synchronous (back-pressure).
const MAX_QUEUED: usize = 4096;

/// How far the committer got.
#[derive(Debug, Clone, Default)]
struct Progress {
    /// Every removal with a sequence number up to this one is committed or settled.
    settled: u64,
    /// The last batch failed with this (the store is unreachable); cleared on success.
    error: Option<String>,
}

#[derive(Default)]
struct Queue {
    items: Vec<(u64, QueuedUnlink)>,
    last_seq: u64,
}

pub(crate) struct Removals {
    queue: Mutex<Queue>,
    wake: Notify,
    progress: watch::Sender<Progress>,
    running: AtomicBool,
}

impl Default for Removals {
    fn default() -> Self {
        Removals {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            progress: watch::Sender::new(Progress::default()),
            running: AtomicBool::new(false),
        }
    }
}

impl Removals {
    /// Queues `item`, waiting for room while the queue is full (back-pressure: `rm` then
    /// runs at the committer's pace). `false` when nothing may be queued: no committer, or the
    /// committer reports the store unreachable.
    pub(crate) async fn push(&self, item: QueuedUnlink) -> bool {
        let mut progress = self.progress.subscribe();
        loop {
            if !self.running.load(Ordering::Acquire) || progress.borrow_and_update().error.is_some() {
                return false;
            }
            {
                let mut queue = lock(&self.queue);
                if queue.items.len() < MAX_QUEUED {
                    queue.last_seq += 1;
                    let seq = queue.last_seq;
                    queue.items.push((seq, item));
                    drop(queue);
                    self.wake.notify_one();
                    return true;
                }
            }
            if progress.changed().await.is_err() {
                return false;
            }
        }
    }

    /// Waits until every removal queued before this call is committed; fails with the store's
    /// error while it cannot be.
    pub(crate) async fn drain(&self) -> Result<(), String> {
        let target = lock(&self.queue).last_seq;
        let mut progress = self.progress.subscribe();
        loop {
            {
                let now = progress.borrow_and_update();
                if now.settled >= target {
                    return Ok(());
                }
                if let Some(e) = &now.error {
                    return Err(e.clone());
                }
            }
            if progress.changed().await.is_err() {
                return Err("the removal committer stopped".into());
            }
        }
    }

    /// Marks the committer running (queueing allowed) or stopped.
    pub(crate) fn set_running(&self, running: bool) {
        self.running.store(running, Ordering::Release);
    }

    /// Waits for queued removals and takes up to `max` of them, oldest first.
    pub(crate) async fn next_batch(&self, max: usize) -> Vec<(u64, QueuedUnlink)> {
        loop {
            let notified = self.wake.notified();
            {
                let mut queue = lock(&self.queue);
                if !queue.items.is_empty() {
                    let n = queue.items.len().min(max);
                    return queue.items.drain(..n).collect();
                }
            }
            notified.await;
        }
    }

    /// Puts a batch that could not be committed back at the head of the queue.
    pub(crate) fn retry(&self, batch: Vec<(u64, QueuedUnlink)>, error: String) {
        let mut queue = lock(&self.queue);
        let rest = std::mem::take(&mut queue.items);
        queue.items = batch.into_iter().chain(rest).collect();
        drop(queue);
        self.progress.send_modify(|p| p.error = Some(error));
    }

    /// Records that every removal up to `seq` is settled.
    pub(crate) fn settled(&self, seq: u64) {
        self.progress.send_modify(|p| {
            p.settled = p.settled.max(seq);
            p.error = None;
        });
    }

    /// Whether anything is queued (the committer drains it before stopping).
    pub(crate) fn is_empty(&self) -> bool {
        lock(&self.queue).items.is_empty()
    }
}

/// Pause before retrying a batch the store refused as unreachable.
pub(crate) const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Removals per transaction.
pub(crate) const BATCH: usize = 512;
