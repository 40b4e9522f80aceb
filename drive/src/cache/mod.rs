//! Node-local block cache: stored block objects on local disk, keyed by content address.
//!
//! - Bounded by bytes and by a minimum free-space ratio of its file system; least recently
//!   used blocks are evicted first.
//! - Entries are written to a temp file and renamed into place, so a crash leaves whole
//!   entries or none; at open the index is rebuilt from the directory (oldest first) and
//!   leftover temp files (older than ten minutes) are removed.
//! - Several processes may share one directory (the node plugin's per-workspace cache: its
//!   mounts and preloads). Entries are immutable and CRC-checked, so that is safe; each
//!   process budgets `max_bytes` against its own view of the directory (what it found at
//!   open, wrote or adopted), so together they may hold more, up to the free-space floor,
//!   which is the file system's and holds for all. One process evicting an entry another
//!   indexes costs the other a miss, nothing more.
//! - Entries are kept in their stored (encoded, possibly encrypted) form: the cache never
//!   holds plaintext of encrypted workspaces.
//! - Each entry ends with a CRC32C of the object, checked on every read: a damaged entry is
//!   dropped and fetched again rather than served. The object was verified against its
//!   content address before it was cached, so a cache hit need not hash it again (BLAKE3 of
//!   a 4 MiB block costs about 1 ms of CPU, its CRC32C about a tenth of that); encrypted
//!   objects are still authenticated when they are decrypted.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use lru::LruCache;

use crate::private_files;

pub mod memory;

pub use memory::MemoryCache;

/// A content address.
pub type BlockHash = [u8; 32];

/// Cache settings.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub dir: PathBuf,
    /// Upper bound of the bytes held.
    pub max_bytes: u64,
    /// Evict when the file system's free space falls below this fraction (0.0 - 0.9).
    pub min_free_ratio: f64,
    /// How a hit's file is read. Entries are written once (temp file, rename) and only ever
    /// unlinked, so a binary may map them instead of copying ([`read_entry_copied`] is the
    /// default; the mount maps them).
    pub read_entry: fn(&Path) -> std::io::Result<Bytes>,
}

/// The free-space floor a cache keeps by default: 15% of its file system, above kubelet's
/// default eviction threshold (`nodefs.available<10%`), so a full cache yields before the
/// node starts evicting pods.
pub const DEFAULT_MIN_FREE_RATIO: f64 = 0.15;

impl CacheConfig {
    /// `max_bytes` under `dir`, keeping [`DEFAULT_MIN_FREE_RATIO`] of the file system free.
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> CacheConfig {
        CacheConfig {
            dir: dir.into(),
            max_bytes,
            min_free_ratio: DEFAULT_MIN_FREE_RATIO,
            read_entry: read_entry_copied,
        }
    }
}

/// The fraction of a file system still free for ordinary users once `incoming` more bytes are
/// written, as `df` reports it: the blocks reserved for root count neither as free nor as
/// capacity (an ext4 volume with a 5% reserve and 5% available is full to `df` and to users,
/// and one with a large reserve is far from full when 15% of its raw size is available).
fn free_fraction(total: u64, free: u64, available: u64, incoming: u64) -> f64 {
    if total == 0 {
        return 1.0; // a file system that reports no size (some FUSE ones): nothing to keep free
    }
    let reserved = free.saturating_sub(available);
    let usable = total.saturating_sub(reserved);
    if usable == 0 {
        return 0.0;
    }
    available.saturating_sub(incoming) as f64 / usable as f64
}

/// Counters, for metrics.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub evictions: AtomicU64,
    pub inserted_bytes: AtomicU64,
    pub hit_bytes: AtomicU64,
}

/// The on-disk block cache.
#[derive(Debug)]
pub struct BlockCache {
    cfg: CacheConfig,
    index: Mutex<Index>,
    stats: CacheStats,
    /// Whether the last free-space check found the file system short (warn on the change).
    low_space: AtomicBool,
}

#[derive(Debug)]
struct Index {
    entries: LruCache<BlockHash, u64>,
    used: u64,
}

const TMP_DIR: &str = ".tmp";

/// Age past which a temp file in a cache is a crash's leftover, not a write in progress.
const STALE_TMP: std::time::Duration = std::time::Duration::from_secs(600);

/// Ends every entry: the object's CRC32C (little endian), then this tag.
const TRAILER_TAG: &[u8; 4] = b"sdc1";
const TRAILER_LEN: usize = 8;

fn trailer(object: &[u8]) -> [u8; TRAILER_LEN] {
    let mut t = [0u8; TRAILER_LEN];
    t[..4].copy_from_slice(&crc32c::crc32c(object).to_le_bytes());
    t[4..].copy_from_slice(TRAILER_TAG);
    t
}

/// The default [`CacheConfig::read_entry`]: the whole entry read into a buffer.
pub fn read_entry_copied(path: &Path) -> std::io::Result<Bytes> {
    std::fs::read(path).map(Bytes::from)
}

/// The object of an entry's bytes, if its trailer checks out.
fn checked_object(mut entry: Bytes) -> Option<Bytes> {
    let body = entry.len().checked_sub(TRAILER_LEN)?;
    let (object, t) = entry.split_at(body);
    let crc = u32::from_le_bytes(t[..4].try_into().ok()?);
    if &t[4..] != TRAILER_TAG || crc32c::crc32c(object) != crc {
        return None;
    }
    entry.truncate(body);
    Some(entry)
}

fn hex(hash: &BlockHash) -> String {
    blake3::Hash::from_bytes(*hash).to_hex().to_string()
}

fn parse_hex(name: &str) -> Option<BlockHash> {
    blake3::Hash::from_hex(name).ok().map(|h| *h.as_bytes())
}

impl BlockCache {
    /// Opens the cache in `cfg.dir`, rebuilding its index from the files present.
    pub fn open(cfg: CacheConfig) -> std::io::Result<BlockCache> {
        private_files::create_dir_all(&cfg.dir.join(TMP_DIR))?;
        // Several processes may share a directory (the node-shared cache of a workspace): a
        // temp file another one is writing right now is not ours to remove. A temp file lives
        // for one block write, so one older than STALE_TMP was left by a crash.
        for entry in std::fs::read_dir(cfg.dir.join(TMP_DIR))? {
            let entry = entry?;
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_none_or(|age| age >= STALE_TMP);
            if stale {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let mut found = Vec::new();
        for shard in std::fs::read_dir(&cfg.dir)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() || shard.file_name() == TMP_DIR {
                continue;
            }
            for entry in std::fs::read_dir(shard.path())? {
                let entry = entry?;
                let meta = entry.metadata()?;
                match entry.file_name().to_str().and_then(parse_hex) {
                    Some(hash) if meta.is_file() => {
                        found.push((meta.modified().ok(), hash, meta.len()));
                    }
                    _ => {
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
            }
        }
        // Oldest first, so the most recently written end up most recently used.
        found.sort();
        let mut index = Index {
            entries: LruCache::unbounded(),
            used: 0,
        };
        for (_, hash, len) in found {
            index.entries.put(hash, len);
            index.used += len;
        }
        let cache = BlockCache {
            cfg,
            index: Mutex::new(index),
            stats: CacheStats::default(),
            low_space: AtomicBool::new(false),
        };
        cache.make_room(0);
        Ok(cache)
    }

    fn path(&self, hash: &BlockHash) -> PathBuf {
        let h = hex(hash);
        self.cfg.dir.join(&h[..2]).join(h)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        crate::sync::lock(&self.index)
    }

    /// The cached object for `hash`, if present and undamaged (its CRC32C checked; see the
    /// module docs). A damaged entry is removed.
    pub async fn get(&self, hash: &BlockHash) -> Option<Bytes> {
        if self.lock().entries.get(hash).is_none() {
            return match self.adopt(hash).await {
                Some(object) => {
                    self.stats.hits.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .hit_bytes
                        .fetch_add(object.len() as u64, Ordering::Relaxed);
                    Some(object)
                }
                None => {
                    self.stats.misses.fetch_add(1, Ordering::Relaxed);
                    None
                }
            };
        }
        let path = self.path(hash);
        let read_entry = self.cfg.read_entry;
        let read = tokio::task::spawn_blocking(move || read_entry(&path).map(checked_object)).await;
        match read {
            Ok(Ok(Some(object))) => {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .hit_bytes
                    .fetch_add(object.len() as u64, Ordering::Relaxed);
                Some(object)
            }
            Ok(Ok(None)) => {
                tracing::warn!(block = %hex(hash), "dropping a damaged cache entry");
                self.remove(hash);
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
            _ => {
                // Evicted meanwhile, or removed behind our back.
                self.forget(hash);
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Byte ranges of the cached object for `hash`, read without the rest of the entry and
    /// without its CRC32C check: for a caller that verifies what it reads (the frames of a
    /// block, against its frame table and address) and calls [`remove`](Self::remove) when
    /// that fails. `None` when the entry is not indexed or cannot be read.
    pub async fn get_ranges(
        &self,
        hash: &BlockHash,
        ranges: [std::ops::Range<u64>; 2],
    ) -> Option<[Bytes; 2]> {
        use std::os::unix::fs::FileExt as _;
        self.lock().entries.get(hash)?;
        let path = self.path(hash);
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<[Bytes; 2]> {
            let file = std::fs::File::open(path)?;
            let read = |range: &std::ops::Range<u64>| -> std::io::Result<Bytes> {
                let mut buf = vec![0u8; range.end.saturating_sub(range.start) as usize];
                file.read_exact_at(&mut buf, range.start)?;
                Ok(Bytes::from(buf))
            };
            Ok([read(&ranges[0])?, read(&ranges[1])?])
        })
        .await;
        match read {
            Ok(Ok(parts)) => {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .hit_bytes
                    .fetch_add((parts[0].len() + parts[1].len()) as u64, Ordering::Relaxed);
                Some(parts)
            }
            _ => {
                // Evicted meanwhile, removed behind our back, or shorter than it should be
                // (the whole read that follows checks it and drops it if damaged).
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// An entry another process wrote into this directory since the index was built (a
    /// `studiodrive-csi preload` warming the node's cache under a running mount): checked
    /// like any entry and taken into the index. A missing file costs one failed open, far
    /// less than the object-store GET that follows a miss.
    async fn adopt(&self, hash: &BlockHash) -> Option<Bytes> {
        let path = self.path(hash);
        let read_entry = self.cfg.read_entry;
        let object = tokio::task::spawn_blocking(move || read_entry(&path).ok().and_then(checked_object))
            .await
            .ok()
            .flatten()?;
        let len = (object.len() + TRAILER_LEN) as u64;
        if self.make_room(len) {
            let mut index = self.lock();
            if index.entries.put(*hash, len).is_some() {
                // Adopted twice at once: the reservation of one is given back.
                index.used -= len;
            }
        }
        Some(object)
    }

    /// Whether the index holds `hash` (without reading the entry), marking it recently used:
    /// a preload keeps what it found as fresh as what it fetched.
    pub fn contains(&self, hash: &BlockHash) -> bool {
        self.lock().entries.get(hash).is_some()
    }

    /// Adds `data` as the object for `hash`, evicting older entries to make room. Failures
    /// only cost a later miss, so they are logged, not returned.
    pub async fn insert(&self, hash: BlockHash, data: Bytes) {
        let len = (data.len() + TRAILER_LEN) as u64;
        if len > self.cfg.max_bytes || self.lock().entries.contains(&hash) {
            return;
        }
        // Room is reserved before the write, so concurrent inserts cannot overshoot the limit.
        if !self.make_room(len) {
            return;
        }
        let path = self.path(&hash);
        let tmp = self
            .cfg
            .dir
            .join(TMP_DIR)
            .join(uuid::Uuid::new_v4().simple().to_string());
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let result = (|| {
                let mut f = private_files::create(&tmp)?;
                f.write_all(&data)?;
                f.write_all(&trailer(&data))?;
                private_files::create_dir_all(path.parent().expect("entries have a parent"))?;
                std::fs::rename(&tmp, &path)
            })();
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            result
        })
        .await;
        let mut index = self.lock();
        match written {
            Ok(Ok(())) => {
                if index.entries.put(hash, len).is_some() {
                    // Raced with an insert of the same block: one file, counted once.
                    index.used -= len;
                }
                self.stats.inserted_bytes.fetch_add(len, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                index.used -= len;
                tracing::warn!(error = %e, "block cache write failed");
            }
            Err(e) => {
                index.used -= len;
                tracing::warn!(error = %e, "block cache write task failed");
            }
        }
    }

    /// Drops the entry for `hash` (for example after it failed verification).
    pub fn remove(&self, hash: &BlockHash) {
        self.forget(hash);
        let _ = std::fs::remove_file(self.path(hash));
    }

    fn forget(&self, hash: &BlockHash) {
        let mut index = self.lock();
        if let Some(len) = index.entries.pop(hash) {
            index.used -= len;
        }
    }

    /// Evicts least recently used entries until `incoming` more bytes fit under the byte limit
    /// and the file system keeps its free-space ratio, then reserves them. Returns `false`
    /// (reserving nothing) when they cannot fit, e.g. while other inserts hold the room.
    fn make_room(&self, incoming: u64) -> bool {
        loop {
            let victim = {
                let mut index = self.lock();
                let over_bytes = index.used + incoming > self.cfg.max_bytes;
                if !over_bytes && !self.low_on_space(incoming) {
                    index.used += incoming;
                    return true;
                }
                match index.entries.pop_lru() {
                    Some((hash, len)) => {
                        index.used -= len;
                        hash
                    }
                    None => return false,
                }
            };
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
            let _ = std::fs::remove_file(self.path(&victim));
        }
    }

    fn low_on_space(&self, incoming: u64) -> bool {
        if self.cfg.min_free_ratio <= 0.0 {
            return false;
        }
        let Ok(s) = nix::sys::statvfs::statvfs(&self.cfg.dir) else {
            return false;
        };
        let unit = s.fragment_size();
        let free = free_fraction(
            s.blocks() * unit,
            s.blocks_free() * unit,
            s.blocks_available() * unit,
            incoming,
        );
        let low = free < self.cfg.min_free_ratio;
        let was_low = self.low_space.swap(low, Ordering::Relaxed);
        if low && !was_low {
            tracing::warn!(
                dir = %self.cfg.dir.display(),
                free_percent = format_args!("{:.1}", free * 100.0),
                min_free_percent = format_args!("{:.1}", self.cfg.min_free_ratio * 100.0),
                "cache file system is short of space: evicting cached blocks to keep it free"
            );
        } else if was_low && !low {
            tracing::info!(dir = %self.cfg.dir.display(), "cache file system has room again");
        }
        low
    }

    /// Bytes held now.
    pub fn used_bytes(&self) -> u64 {
        self.lock().used
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The configured limits.
    pub fn config(&self) -> &CacheConfig {
        &self.cfg
    }

    /// Hit, miss, eviction and byte counters.
    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// Whether `dir` is this cache's directory (for tests and diagnostics).
    pub fn dir(&self) -> &Path {
        &self.cfg.dir
    }
}

#[cfg(test)]
mod tests {
    use super::free_fraction;

    const GIB: u64 = 1 << 30;

    #[test]
    fn free_space_is_measured_as_df_does() {
        // No reserve: plain available / total.
        assert!((free_fraction(100 * GIB, 40 * GIB, 40 * GIB, 0) - 0.40).abs() < 1e-9);
        // A 160 GiB root reserve on a 252 GiB volume with 38 GiB available: `df` says 41%
        // free (54 GiB used), not 15%.
        let f = free_fraction(252 * GIB, 198 * GIB, 38 * GIB, 0);
        assert!((f - 38.0 / 92.0).abs() < 1e-9, "{f}");
        // A 5% reserve with only the reserve left is full.
        assert_eq!(free_fraction(100 * GIB, 5 * GIB, 0, 0), 0.0);
        // The incoming bytes count as used.
        assert!((free_fraction(100 * GIB, 10 * GIB, 10 * GIB, 5 * GIB) - 0.05).abs() < 1e-9);
        assert_eq!(free_fraction(100 * GIB, GIB, GIB, 2 * GIB), 0.0);
        // A file system that reports no size keeps nothing free.
        assert_eq!(free_fraction(0, 0, 0, 0), 1.0);
    }
}
