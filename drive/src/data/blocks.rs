//! The block data path of one workspace: content addressing, encryption, the object store,
//! the node-local cache and the block records in the metadata store, behind
//! [`crate::fs::BlockIo`].
//!
//! - Writes: hash, register the block (an already available identical block is not uploaded
//!   again; one still `created` is uploaded by this writer too), encode, upload. Only then
//!   may a block map reference it; its commit makes it available. A failed upload changes no
//!   shared state (see [`crate::meta::BlockState`]).
//! - Reads: cache first; on a miss one fetch per block however many readers wait for it
//!   (single-flight), verified by the decoder, then kept in the cache. A damaged cache entry
//!   is dropped and the block fetched again (the cache checks its own entries; see
//!   [`crate::cache`]).
//!
//! Hashing and encryption of blocks over 64 KiB run on the blocking pool: a 4 MiB block costs
//! milliseconds of CPU that must not stall the async workers. Smaller ones run in place.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};

use crate::cache::{BlockCache, MemoryCache};
use crate::data::format::{BlockCodec, BlockHash, FormatError, RangePlan, hash_hex};
use crate::data::store::{ChunkStore, StoreError};
use crate::error::MetaError;
use crate::fs::{BlockErrorKind, BlockIo, BlockIoError};
use crate::meta::PgMetaStore;
use crate::ports::MetaStore;
use crate::sync::lock;

/// A failure on the block data path.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("block records: {0}")]
    Meta(#[from] MetaError),
    #[error("block {hash} is not available in the metadata store")]
    Unavailable { hash: String },
    #[error("{0}")]
    Shared(Arc<DataError>),
    #[error("block codec task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// Counters of the object-store traffic, for metrics.
#[derive(Debug, Default)]
pub struct DataStats {
    pub gets: AtomicU64,
    pub puts: AtomicU64,
    pub errors: AtomicU64,
    pub bytes_downloaded: AtomicU64,
    pub bytes_uploaded: AtomicU64,
    /// Blocks not uploaded because an identical one was already stored.
    pub dedup_hits: AtomicU64,
}

type Fetch = Shared<BoxFuture<'static, Result<Bytes, Arc<DataError>>>>;

struct Inner<M> {
    meta: M,
    store: Arc<dyn ChunkStore>,
    codec: BlockCodec,
    cache: Option<Arc<BlockCache>>,
    memory: Option<Arc<MemoryCache>>,
    /// Whether the node cache keeps copies of this store's objects: not of a local store.
    cache_copies: bool,
    /// Uploads of at least this many plaintext bytes are not copied into the node cache.
    uncached_upload_len: u64,
    inflight: Mutex<HashMap<BlockHash, Fetch>>,
    /// Headers and frame tables of blocks read in part, verified: the next random read in
    /// such a block fetches only its frames (one GET, not two).
    tables: Mutex<lru::LruCache<BlockHash, Bytes>>,
    stats: DataStats,
}

/// Frame tables kept for ranged reads: 8,192 blocks (32 GiB of 4 MiB blocks) in at most
/// 16 MiB (a 4 MiB plaintext block's table is 2 KiB).
const TABLES_KEPT: std::num::NonZeroUsize = std::num::NonZeroUsize::new(8192).expect("not zero");

/// Blocks of one workspace. Cheap to clone.
#[derive(Clone)]
pub struct BlockStore<M: MetaStore = PgMetaStore> {
    inner: Arc<Inner<M>>,
}

impl<M: MetaStore> std::fmt::Debug for BlockStore<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockStore")
            .field("store", &self.inner.store.describe())
            .field("codec", &self.inner.codec)
            .field("cache", &self.inner.cache.as_ref().map(|c| c.dir().to_path_buf()))
            .finish()
    }
}

/// The object key of block `hash`.
pub fn block_key(hash: &BlockHash) -> String {
    let h = hash_hex(hash);
    format!("blocks/{}/{h}", &h[..2])
}

impl<M: MetaStore> BlockStore<M> {
    /// Blocks encoded by `codec` in `store`, cached in `cache` when given. Written and fetched
    /// blocks go into the cache, so reading back what this node wrote is warm (see
    /// [`BlockStore::cache_uploads_below`] to keep large uploads out); not in front
    /// of a local store, whose objects already are on this node's disk (each block would be
    /// written twice: about a third of the mount's CPU per written GB, and half of a cold
    /// read's, in profiles).
    pub fn new(
        meta: M,
        store: Arc<dyn ChunkStore>,
        codec: BlockCodec,
        cache: Option<Arc<BlockCache>>,
    ) -> BlockStore<M> {
        let cache_copies = !store.is_local();
        BlockStore {
            inner: Arc::new(Inner {
                meta,
                store,
                codec,
                cache,
                memory: None,
                cache_copies,
                uncached_upload_len: u64::MAX,
                inflight: Mutex::new(HashMap::new()),
                tables: Mutex::new(lru::LruCache::new(TABLES_KEPT)),
                stats: DataStats::default(),
            }),
        }
    }

    /// Also keeps verified plaintext of recently used blocks in `memory`, so repeated reads
    /// of a hot block skip the disk cache and its verification. Call before first use.
    pub fn with_memory_cache(mut self, memory: Arc<MemoryCache>) -> BlockStore<M> {
        Arc::get_mut(&mut self.inner)
            .expect("a BlockStore is configured before it is shared")
            .memory = Some(memory);
        self
    }

    /// Copies only blocks shorter than `len` bytes into the node cache when they are
    /// uploaded (fetched blocks are always cached). With a workspace's block size this keeps
    /// full blocks out and small files and the tails of files in: writing a copy of every
    /// uploaded block doubled the disk writes of a node writing to S3, and cost about 40% of
    /// the frames-write rate in the bench (docs/benchmarks.md). Call before first use.
    pub fn cache_uploads_below(mut self, len: u64) -> BlockStore<M> {
        Arc::get_mut(&mut self.inner)
            .expect("a BlockStore is configured before it is shared")
            .uncached_upload_len = len;
        self
    }

    /// The in-memory plaintext cache, if any.
    pub fn memory_cache(&self) -> Option<&Arc<MemoryCache>> {
        self.inner.memory.as_ref()
    }

    /// Object-store counters.
    pub fn stats(&self) -> &DataStats {
        &self.inner.stats
    }

    /// The cache, if any.
    pub fn cache(&self) -> Option<&Arc<BlockCache>> {
        self.inner.cache.as_ref()
    }

    /// The object store.
    pub fn store(&self) -> &Arc<dyn ChunkStore> {
        &self.inner.store
    }

    /// The codec (its address function names blocks).
    pub fn codec(&self) -> &BlockCodec {
        &self.inner.codec
    }

    /// Stores `data` durably and returns its address.
    pub async fn put(&self, data: Bytes) -> Result<BlockHash, DataError> {
        let inner = &self.inner;
        let codec = inner.codec.clone();
        let (hash, data) = codec_work(data.len(), move || (codec.address(&data), data)).await?;
        let len = data.len() as u64;
        let stored_len = inner.codec.stored_len(data.len()) as u64;
        if inner.meta.register_block(&hash, len, stored_len).await? {
            inner.stats.dedup_hits.fetch_add(1, Ordering::Relaxed);
            inner.remember(hash, &data);
            return Ok(hash);
        }
        let codec = inner.codec.clone();
        let plaintext = data.clone();
        let object = codec_work(plaintext.len(), move || codec.encode(&hash, &plaintext)).await?;
        inner.stats.puts.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = inner.store.put(&block_key(&hash), object.clone()).await {
            inner.stats.errors.fetch_add(1, Ordering::Relaxed);
            // The record stays as it is: another writer of the same block may have uploaded it
            // and be about to commit. An unreferenced `created` record is GC's to sweep.
            return Err(e.into());
        }
        inner
            .stats
            .bytes_uploaded
            .fetch_add(stored_len, Ordering::Relaxed);
        // The record stays `created` until the content commit that references the block makes
        // it available (one metadata commit fewer per block).
        if inner.cache_copies
            && len < inner.uncached_upload_len
            && let Some(cache) = &inner.cache
        {
            cache.insert(hash, object).await;
        }
        inner.remember(hash, &data);
        Ok(hash)
    }

    /// The verified plaintext `range` of block `hash`, whose plaintext is `len` bytes. Only
    /// the frames holding `range` are read and verified: from the node's cache when it holds
    /// the block, else from the object store (two ranged GETs in parallel: the header and
    /// frame table, and the frames; a table verified before is kept, and then only the frames
    /// are fetched), and no frames are cached. A block held in memory, being fetched whole,
    /// or stored whole (format version 1, or one frame) is read whole.
    pub async fn get_range(&self, hash: BlockHash, len: u64, range: Range<u64>) -> Result<Bytes, DataError> {
        let inner = &self.inner;
        let plan = match inner.codec.range_plan(len, range.start, range.end) {
            Some(plan)
                if !inner.memory.as_ref().is_some_and(|m| m.contains(&hash))
                    && !lock(&inner.inflight).contains_key(&hash) =>
            {
                plan
            }
            _ => return Ok(slice_of(self.get(hash).await?, &range)),
        };
        let start = plan.plaintext_start();
        let frames_range = range.start - start..range.end - start;
        if let Some(cache) = &inner.cache
            && let Some([prefix, body]) = cache
                .get_ranges(&hash, [plan.prefix.clone(), plan.body.clone()])
                .await
        {
            let codec = inner.codec.clone();
            let plan = plan.clone();
            match codec_work(body.len(), move || codec.decode_range(&hash, &plan, prefix, body)).await? {
                Ok(Some(frames)) => return Ok(slice_of(frames, &frames_range)),
                Ok(None) => return Ok(slice_of(self.get(hash).await?, &range)),
                Err(e) => {
                    tracing::warn!(error = %e, "dropping a damaged cache entry");
                    cache.remove(&hash);
                }
            }
        }
        let frames = match inner.fetch_frames(hash, &plan, true).await {
            // A table kept from an earlier object of this address (collected, then stored
            // again: an encrypted block's tags differ each time) fails the frames: once more
            // with the table fetched too.
            Err(DataError::Format(_)) if lock(&inner.tables).pop(&hash).is_some() => {
                inner.fetch_frames(hash, &plan, false).await?
            }
            other => other?,
        };
        match frames {
            Some(frames) => Ok(slice_of(frames, &frames_range)),
            None => Ok(slice_of(self.get(hash).await?, &range)),
        }
    }

    /// The verified plaintext of block `hash`.
    pub async fn get(&self, hash: BlockHash) -> Result<Bytes, DataError> {
        if let Some(plaintext) = self.inner.memory.as_ref().and_then(|m| m.get(&hash)) {
            return Ok(plaintext);
        }
        if let Some(cache) = &self.inner.cache
            && let Some(object) = cache.get(&hash).await
        {
            let codec = self.inner.codec.clone();
            // In a plaintext workspace a hit is only a header check (the cache checked its
            // CRC32C): no hop to the blocking pool for it.
            let work = if codec.is_encrypted() { object.len() } else { 0 };
            match codec_work(work, move || codec.decode_cached(&hash, object)).await? {
                Ok(plaintext) => {
                    self.inner.remember(hash, &plaintext);
                    return Ok(plaintext);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "dropping a damaged cache entry");
                    cache.remove(&hash);
                }
            }
        }
        let fetch = {
            let mut inflight = lock(&self.inner.inflight);
            inflight
                .entry(hash)
                .or_insert_with(|| {
                    let inner = self.inner.clone();
                    async move {
                        let result = inner.fetch(hash).await.map_err(Arc::new);
                        lock(&inner.inflight).remove(&hash);
                        result
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        fetch.await.map_err(DataError::Shared)
    }
}

impl<M: MetaStore> Inner<M> {
    /// Keeps verified `plaintext` of block `hash` in the memory cache, if there is one.
    fn remember(&self, hash: BlockHash, plaintext: &Bytes) {
        if let Some(memory) = &self.memory {
            memory.insert(hash, plaintext.clone());
        }
    }

    /// The verified frames of `plan` from the object store (`None`: the object is not the
    /// framed block the plan assumed). With `kept_table`, a verified table kept from an
    /// earlier read saves the GET of the header and table.
    async fn fetch_frames(
        &self,
        hash: BlockHash,
        plan: &RangePlan,
        kept_table: bool,
    ) -> Result<Option<Bytes>, DataError> {
        let key = block_key(&hash);
        let known_table = if kept_table {
            lock(&self.tables).get(&hash).cloned()
        } else {
            None
        };
        let fetched = match known_table.clone() {
            Some(prefix) => {
                self.stats.gets.fetch_add(1, Ordering::Relaxed);
                self.store
                    .get_range(&key, plan.body.clone())
                    .await
                    .map(|body| (prefix, body))
            }
            None => {
                self.stats.gets.fetch_add(2, Ordering::Relaxed);
                futures::try_join!(
                    self.store.get_range(&key, plan.prefix.clone()),
                    self.store.get_range(&key, plan.body.clone())
                )
            }
        };
        let (prefix, body) = fetched.inspect_err(|_| {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        })?;
        let fetched_bytes = body.len() + if known_table.is_some() { 0 } else { prefix.len() };
        self.stats
            .bytes_downloaded
            .fetch_add(fetched_bytes as u64, Ordering::Relaxed);
        let codec = self.codec.clone();
        let table = prefix.clone();
        let plan = plan.clone();
        let frames = codec_work(body.len(), move || codec.decode_range(&hash, &plan, prefix, body)).await??;
        if frames.is_some() && known_table.is_none() {
            // A copy: the fetched prefix may be a slice of a larger buffer, which the kept
            // tables must not hold on to.
            lock(&self.tables).put(hash, Bytes::copy_from_slice(&table));
        }
        Ok(frames)
    }

    async fn fetch(&self, hash: BlockHash) -> Result<Bytes, DataError> {
        self.stats.gets.fetch_add(1, Ordering::Relaxed);
        let object = match self.store.get(&block_key(&hash)).await {
            Ok(o) => o,
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                return Err(e.into());
            }
        };
        self.stats
            .bytes_downloaded
            .fetch_add(object.len() as u64, Ordering::Relaxed);
        let codec = self.codec.clone();
        let (plaintext, object) = codec_work(object.len(), move || {
            (codec.decode(&hash, object.clone()), object)
        })
        .await?;
        let plaintext = plaintext?;
        self.remember(hash, &plaintext);
        if self.cache_copies
            && let Some(cache) = &self.cache
        {
            cache.insert(hash, object).await;
        }
        Ok(plaintext)
    }
}

/// `range` of a block's verified plaintext; bytes past its end read as zeros, as the reader
/// treats a block shorter than its block-map entry.
fn slice_of(plaintext: Bytes, range: &Range<u64>) -> Bytes {
    let len = plaintext.len() as u64;
    if range.end <= len {
        return plaintext.slice(range.start as usize..range.end as usize);
    }
    let mut out = vec![0u8; (range.end - range.start) as usize];
    if range.start < len {
        out[..(len - range.start) as usize].copy_from_slice(&plaintext[range.start as usize..]);
    }
    Bytes::from(out)
}

/// Hashing or encoding up to this many bytes runs in place: it takes microseconds, less than
/// the hop to the blocking pool and back (a 4 KiB file's close made four such hops).
const IN_PLACE_CODEC_BYTES: usize = 64 << 10;

/// Runs codec work that hashes or encrypts `len` bytes: in place when small, else on the
/// blocking pool (a 4 MiB block costs milliseconds of CPU that must not stall the async
/// workers).
async fn codec_work<T: Send + 'static>(
    len: usize,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, DataError> {
    if len <= IN_PLACE_CODEC_BYTES {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f).await.map_err(DataError::Task)
}

impl DataError {
    /// The class of this failure, for the file-system layer's errno.
    pub fn block_kind(&self) -> BlockErrorKind {
        match self {
            DataError::Store(StoreError::NoSpace { .. }) => BlockErrorKind::NoSpace,
            DataError::Store(StoreError::Unavailable { .. }) => BlockErrorKind::Unavailable,
            DataError::Store(StoreError::NotFound { .. }) | DataError::Format(_) => BlockErrorKind::Corrupt,
            DataError::Store(StoreError::Failed { .. }) => BlockErrorKind::Refused,
            DataError::Store(StoreError::NeedsRestore { .. }) => BlockErrorKind::NeedsRestore,
            DataError::Meta(e) if e.kind() == crate::error::ErrorKind::Unavailable => {
                BlockErrorKind::Unavailable
            }
            DataError::Meta(_) | DataError::Task(_) => BlockErrorKind::Internal,
            // The record says the block is not stored (never uploaded, or failed).
            DataError::Unavailable { .. } => BlockErrorKind::Corrupt,
            DataError::Shared(inner) => inner.block_kind(),
        }
    }
}

impl<M: MetaStore> BlockIo for BlockStore<M> {
    async fn put_block(&self, data: Bytes) -> Result<[u8; 32], BlockIoError> {
        self.put(data)
            .await
            .map_err(|e| BlockIoError::new(e.block_kind(), "store block", e))
    }

    async fn renew_blocks(&self, hashes: &[[u8; 32]]) -> Result<Vec<[u8; 32]>, BlockIoError> {
        self.inner.meta.renew_blocks(hashes).await.map_err(|e| {
            let e = DataError::from(e);
            BlockIoError::new(e.block_kind(), "renew block records", e)
        })
    }

    async fn get_block(&self, hash: [u8; 32], _len: u64) -> Result<Bytes, BlockIoError> {
        self.get(hash)
            .await
            .map_err(|e| BlockIoError::new(e.block_kind(), "fetch block", e))
    }

    async fn get_block_range(
        &self,
        hash: [u8; 32],
        len: u64,
        range: Range<u64>,
    ) -> Result<Bytes, BlockIoError> {
        self.get_range(hash, len, range)
            .await
            .map_err(|e| BlockIoError::new(e.block_kind(), "fetch part of a block", e))
    }
}
