//! The read path of an open file: offset and length to blocks, through the block store (and
//! its cache), with sequential-read detection and a prefetch window that doubles while reads
//! stay sequential (up to a byte budget) and collapses on a seek; a read after a seek fetches
//! only the verified frames it needs (`BlockIo::get_block_range`). Every block a reader holds
//! (fetched ahead, or the one it is reading) holds a permit of the mount's read buffers, so
//! memory does not grow with the number of open files. The buffers are shared evenly among
//! the files read sequentially ([`ReadBuffers`]): one sequential reader cannot take them all and
//! leave the others without room for the block each is reading, which each would then fetch
//! again for every request in it.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::fs::blocks::{BlockErrorKind, BlockIo};
use crate::fs::error::FsError;
use crate::fs::write::copy_block;
use crate::meta::FileBlock;
use crate::model::{NodeId, View};
use crate::ports::MetaStore;
use crate::rules::blocks::spans;

/// Block-map entries fetched per metadata query.
const MAP_CHUNK: u64 = 256;

/// A block fetched ahead, holding one permit of the mount's read buffers until it is read or
/// dropped.
type Prefetch = JoinHandle<Result<(Bytes, OwnedSemaphorePermit), FsError>>;

/// The mount's read buffers: permits of one block each, for blocks that open files hold
/// (`FsConfig::read_buffer_bytes`), and how many files are being read.
#[derive(Debug)]
pub(crate) struct ReadBuffers {
    permits: Arc<Semaphore>,
    blocks: u64,
    /// Readers reading sequentially (with a prefetch window open): a file opened and not
    /// read, or read at one place (a header), takes no share.
    readers: AtomicU64,
}

impl ReadBuffers {
    /// Buffers of `blocks` blocks.
    pub(crate) fn new(blocks: u64) -> ReadBuffers {
        let blocks = blocks.clamp(1, Semaphore::MAX_PERMITS as u64);
        ReadBuffers {
            permits: Arc::new(Semaphore::new(blocks as usize)),
            blocks,
            readers: AtomicU64::new(0),
        }
    }

    /// Blocks one reader may fetch ahead: its even share of the buffers, less the block it
    /// is reading.
    fn ahead_share(&self) -> u64 {
        let readers = self.readers.load(Ordering::Relaxed).max(1);
        (self.blocks / readers).saturating_sub(1)
    }

    fn try_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }
}

/// A read cursor over the committed content of one file, as of its open.
pub(crate) struct Reader<B: BlockIo, M: MetaStore> {
    meta: M,
    blocks: Arc<B>,
    view: View,
    ino: NodeId,
    size: u64,
    block_size: u64,
    /// Largest prefetch window, in blocks.
    max_window: u64,
    map: BTreeMap<u64, FileBlock>,
    loaded_chunks: HashSet<u64>,
    /// The block being read, kept between reads while it holds a read-buffer permit.
    current: Option<(u64, Bytes, OwnedSemaphorePermit)>,
    prefetch: BTreeMap<u64, Prefetch>,
    buffers: Arc<ReadBuffers>,
    /// Whether this reader counts in `buffers.readers` (while its window is open).
    counted: bool,
    next_offset: u64,
    window: u64,
}

impl<B: BlockIo, M: MetaStore> Reader<B, M> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        meta: M,
        blocks: Arc<B>,
        view: View,
        ino: NodeId,
        size: u64,
        block_size: u64,
        readahead_bytes: u64,
        buffers: Arc<ReadBuffers>,
    ) -> Reader<B, M> {
        Reader {
            meta,
            blocks,
            view,
            ino,
            size,
            block_size,
            max_window: (readahead_bytes / block_size).max(1),
            map: BTreeMap::new(),
            loaded_chunks: HashSet::new(),
            current: None,
            prefetch: BTreeMap::new(),
            buffers,
            counted: false,
            next_offset: 0,
            window: 0,
        }
    }

    /// The size this reader reads up to.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Reads up to `len` bytes at `offset` (short at the end of the file). A range inside one
    /// stored block is returned as a slice of it, without a copy.
    pub(crate) async fn read(&mut self, offset: u64, len: u64) -> Result<Bytes, FsError> {
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        self.track(offset, end);
        let bs = self.block_size;
        let in_block = offset % bs;
        if offset / bs == (end - 1) / bs
            && let Some(b) = self.entry(offset / bs).await?
        {
            // A seek into a block this reader does not hold fetches only the frames it needs;
            // reads that stay sequential fetch whole blocks, and the window ahead (a read
            // at offset 0 is taken as the start of a sequential read).
            let stop = in_block + (end - offset);
            if self.window == 0 && offset > 0 && !self.holds(b.idx) && stop <= b.len {
                return Ok(self.blocks.get_block_range(b.hash, b.len, in_block..stop).await?);
            }
            let block = match self.block(&b).await {
                Ok(block) => block,
                // A damaged block may still have intact frames: the part this read needs is
                // fetched on its own, and fails only if it touches the damage.
                Err(FsError::Blocks(e)) if e.kind == BlockErrorKind::Corrupt && stop <= b.len => {
                    tracing::warn!(error = %e, ino = ?self.ino, block = b.idx, "reading part of a damaged block");
                    return Ok(self.blocks.get_block_range(b.hash, b.len, in_block..stop).await?);
                }
                Err(e) => return Err(e),
            };
            if stop <= b.len.min(block.len() as u64) {
                self.schedule(end).await?;
                return Ok(block.slice(in_block as usize..stop as usize));
            }
        }
        let mut out = vec![0u8; (end - offset) as usize];
        for span in spans(offset, end, bs) {
            let dst = &mut out[span.in_buffer()];
            match self.entry(span.idx).await? {
                None => dst.fill(0),
                Some(b) => {
                    let block = self.block(&b).await?;
                    copy_block(&block, b.len, span.in_block, dst);
                }
            }
        }
        self.schedule(end).await?;
        Ok(Bytes::from(out))
    }

    /// Updates the sequential-read detector: the kernel's own readahead keeps requests close
    /// to each other but not always in order, so "near the last end" counts as sequential.
    fn track(&mut self, offset: u64, end: u64) {
        let slack = self.block_size;
        let sequential = offset + slack >= self.next_offset && offset <= self.next_offset + slack;
        if sequential && self.next_offset > 0 {
            self.window = (self.window * 2).clamp(1, self.max_window);
        } else {
            self.window = 0;
            let first = offset / self.block_size;
            let keep_until = end / self.block_size + self.max_window;
            self.prefetch.retain(|idx, task| {
                let keep = *idx >= first && *idx <= keep_until;
                if !keep {
                    task.abort();
                }
                keep
            });
        }
        self.next_offset = end;
        self.count_as_reader(self.window > 0);
    }

    /// Counts this reader among the sequential readers sharing the buffers, or stops.
    fn count_as_reader(&mut self, sequential: bool) {
        if sequential != self.counted {
            self.counted = sequential;
            if sequential {
                self.buffers.readers.fetch_add(1, Ordering::Relaxed);
            } else {
                self.buffers.readers.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Starts fetching the blocks of the window after `end`.
    async fn schedule(&mut self, end: u64) -> Result<(), FsError> {
        if self.window == 0 {
            return Ok(());
        }
        let bs = self.block_size;
        let first = end.div_ceil(bs);
        let last_block = self.size.div_ceil(bs);
        let window = self.window.min(self.buffers.ahead_share());
        for idx in first..(first + window).min(last_block) {
            if self.holds(idx) {
                continue;
            }
            if let Some(b) = self.entry(idx).await? {
                // The mount's read buffers are spent: fetch the rest when it is read.
                let Some(permit) = self.buffers.try_permit() else {
                    break;
                };
                let blocks = self.blocks.clone();
                let task = tokio::spawn(async move { Ok((blocks.get_block(b.hash, b.len).await?, permit)) });
                self.prefetch.insert(idx, task);
            }
        }
        Ok(())
    }

    /// Whether block `idx` is the one being read or is being fetched ahead.
    fn holds(&self, idx: u64) -> bool {
        self.current.as_ref().is_some_and(|(c, ..)| *c == idx) || self.prefetch.contains_key(&idx)
    }

    /// The block-map entry of `idx` (`None` for a hole), loading the map in chunks.
    async fn entry(&mut self, idx: u64) -> Result<Option<FileBlock>, FsError> {
        let chunk = idx / MAP_CHUNK;
        if !self.loaded_chunks.contains(&chunk) {
            let found = self
                .meta
                .block_map(self.view, self.ino, chunk * MAP_CHUNK, MAP_CHUNK)
                .await?;
            for b in found {
                self.map.insert(b.idx, b);
            }
            self.loaded_chunks.insert(chunk);
        }
        Ok(self.map.get(&idx).cloned())
    }

    /// The bytes of block `b`, from the prefetch window or the block store.
    async fn block(&mut self, b: &FileBlock) -> Result<Bytes, FsError> {
        if let Some((idx, bytes, _)) = &self.current
            && *idx == b.idx
        {
            return Ok(bytes.clone());
        }
        // The previous block goes first: its permit may be the one this block can keep.
        let previous = self.current.take().map(|(_, _, permit)| permit);
        let (bytes, permit) = match self.prefetch.remove(&b.idx) {
            Some(task) => match task.await {
                Ok(Ok((bytes, permit))) => (bytes, Some(permit)),
                // A failed or cancelled prefetch is retried in the foreground, once.
                _ => (self.blocks.get_block(b.hash, b.len).await?, previous),
            },
            None => (self.blocks.get_block(b.hash, b.len).await?, previous),
        };
        let permit = permit.or_else(|| self.buffers.try_permit());
        // Blocks behind the reader are not needed any more.
        let stale: Vec<u64> = self.prefetch.range(..b.idx).map(|(k, _)| *k).collect();
        for idx in stale {
            if let Some(task) = self.prefetch.remove(&idx) {
                task.abort();
            }
        }
        // Without a permit the block is not kept: the next read fetches it again (from the
        // memory cache when it is still there).
        self.current = permit.map(|permit| (b.idx, bytes.clone(), permit));
        Ok(bytes)
    }
}

impl<B: BlockIo, M: MetaStore> Drop for Reader<B, M> {
    fn drop(&mut self) {
        for task in self.prefetch.values() {
            task.abort();
        }
        self.count_as_reader(false);
    }
}
