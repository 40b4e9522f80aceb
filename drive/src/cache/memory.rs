//! In-memory cache of verified block plaintext, in front of the on-disk cache.
//!
//! A disk cache hit still costs reading and verifying a whole block (about 3 ms for 4 MiB
//! here), which is what a random 4 KiB read or a second reader of a hot block would pay on
//! every request. Blocks are immutable and content-addressed, so a block verified once can be
//! served from memory until it is evicted; there is nothing to invalidate. Bounded by bytes,
//! least recently used first out. Plaintext of an encrypted workspace lives here only in the
//! mount's own memory, never on disk.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use lru::LruCache;

use super::BlockHash;

/// Counters, for metrics.
#[derive(Debug, Default)]
pub struct MemoryCacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub evictions: AtomicU64,
}

/// Verified plaintext blocks, bounded by bytes.
#[derive(Debug)]
pub struct MemoryCache {
    max_bytes: u64,
    state: Mutex<State>,
    stats: MemoryCacheStats,
}

#[derive(Debug)]
struct State {
    blocks: LruCache<BlockHash, Bytes>,
    used: u64,
}

impl MemoryCache {
    /// A cache holding at most `max_bytes` of block plaintext.
    pub fn new(max_bytes: u64) -> MemoryCache {
        MemoryCache {
            max_bytes,
            state: Mutex::new(State {
                blocks: LruCache::unbounded(),
                used: 0,
            }),
            stats: MemoryCacheStats::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// The plaintext of block `hash`, if held.
    pub fn get(&self, hash: &BlockHash) -> Option<Bytes> {
        let found = self.lock().blocks.get(hash).cloned();
        let counter = if found.is_some() {
            &self.stats.hits
        } else {
            &self.stats.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Whether block `hash` is held (not counted as a hit or a miss).
    pub fn contains(&self, hash: &BlockHash) -> bool {
        self.lock().blocks.contains(hash)
    }

    /// Keeps `plaintext` (already verified) as block `hash`, evicting the least recently used
    /// blocks beyond the limit. A block larger than the whole cache is not kept.
    pub fn insert(&self, hash: BlockHash, plaintext: Bytes) {
        let len = plaintext.len() as u64;
        if len > self.max_bytes {
            return;
        }
        let mut state = self.lock();
        if let Some(old) = state.blocks.put(hash, plaintext) {
            state.used -= old.len() as u64;
        }
        state.used += len;
        while state.used > self.max_bytes {
            let Some((_, evicted)) = state.blocks.pop_lru() else {
                break;
            };
            state.used -= evicted.len() as u64;
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Bytes held.
    pub fn used_bytes(&self) -> u64 {
        self.lock().used
    }

    /// Counters.
    pub fn stats(&self) -> &MemoryCacheStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(n: u8, len: usize) -> (BlockHash, Bytes) {
        ([n; 32], Bytes::from(vec![n; len]))
    }

    #[test]
    fn holds_at_most_its_limit_and_evicts_least_recently_used() {
        let cache = MemoryCache::new(3000);
        for n in 0..3 {
            let (h, b) = block(n, 1000);
            cache.insert(h, b);
        }
        assert_eq!(cache.used_bytes(), 3000);
        // Touch block 0 so block 1 is the oldest, then overflow by one block.
        assert_eq!(cache.get(&[0; 32]).unwrap(), vec![0u8; 1000]);
        let (h, b) = block(3, 1000);
        cache.insert(h, b);
        assert_eq!(cache.used_bytes(), 3000);
        assert!(cache.get(&[1; 32]).is_none(), "least recently used block kept");
        for n in [0, 2, 3] {
            assert_eq!(cache.get(&[n; 32]).unwrap(), vec![n; 1000]);
        }
        assert_eq!(cache.stats().evictions.load(Ordering::Relaxed), 1);
        assert_eq!(cache.stats().misses.load(Ordering::Relaxed), 1);
        assert_eq!(cache.stats().hits.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn reinsert_does_not_double_count_and_oversized_blocks_are_skipped() {
        let cache = MemoryCache::new(2000);
        let (h, b) = block(7, 1500);
        cache.insert(h, b.clone());
        cache.insert(h, b);
        assert_eq!(cache.used_bytes(), 1500);
        let (big, data) = block(8, 2001);
        cache.insert(big, data);
        assert!(cache.get(&big).is_none());
        assert_eq!(cache.used_bytes(), 1500);
        let zero = MemoryCache::new(0);
        let (h, b) = block(9, 1);
        zero.insert(h, b);
        assert!(zero.get(&h).is_none());
    }
}
