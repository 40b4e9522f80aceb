//! Block-sized buffers the file store keeps for reuse.
//!
//! A fresh buffer of a block's size is a mapping of its own (the mount maps buffers of 2 MiB
//! or more apart from the heap, so that freed ones leave resident memory), and the kernel
//! faults in and zeroes each of its 4 KiB pages on first touch: a fifth of a mount's CPU on a
//! warm read of a file store (perf, issue 21). A few buffers, once touched, are kept and
//! reused; the rest are freed as before, so a pool adds at most `max_kept x max_len` bytes to
//! a mount's memory.

use std::sync::Mutex;

use bytes::Bytes;

/// Buffers kept for reuse, bounded in number and size.
#[derive(Debug)]
pub(crate) struct BufferPool {
    kept: Mutex<Vec<Vec<u8>>>,
    max_kept: usize,
    max_len: usize,
}

impl BufferPool {
    /// A pool keeping at most `max_kept` buffers of at most `max_len` bytes each.
    pub(crate) const fn new(max_kept: usize, max_len: usize) -> BufferPool {
        BufferPool {
            kept: Mutex::new(Vec::new()),
            max_kept,
            max_len,
        }
    }

    /// A buffer of exactly `len` bytes whose contents are unspecified (a kept buffer's old
    /// bytes, or zeros): the caller overwrites what it uses.
    pub(crate) fn take(&self, len: usize) -> Vec<u8> {
        let mut buf = crate::sync::lock(&self.kept).pop().unwrap_or_default();
        if buf.capacity() < len {
            // Not grown in place: a larger kept buffer's old bytes would be copied for nothing.
            buf = Vec::new();
        }
        // Writes only past the buffer's previous length; the pages below it are resident.
        buf.resize(len, 0);
        buf
    }

    /// Keeps `buf` for a later [`take`](Self::take), unless the pool is full or `buf` is
    /// larger than the pool keeps.
    pub(crate) fn give(&self, buf: Vec<u8>) {
        if buf.capacity() > self.max_len {
            return;
        }
        let mut kept = crate::sync::lock(&self.kept);
        if kept.len() < self.max_kept {
            kept.push(buf);
        }
    }

    /// `buf` as `Bytes` that give it back to this pool when the last handle is dropped.
    pub(crate) fn bytes(&'static self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled { buf, pool: self })
    }
}

/// A buffer on loan from a pool, as the owner of a `Bytes`.
struct Pooled {
    buf: Vec<u8>,
    pool: &'static BufferPool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_when_their_bytes_are_dropped() {
        static POOL: BufferPool = BufferPool::new(2, 1 << 20);
        let mut buf = POOL.take(4096);
        buf.fill(7);
        let ptr = buf.as_ptr();
        let bytes = POOL.bytes(buf);
        let slice = bytes.slice(10..20);
        drop(bytes);
        assert!(crate::sync::lock(&POOL.kept).is_empty(), "a slice still holds it");
        assert_eq!(&slice[..], &[7; 10]);
        drop(slice);
        let again = POOL.take(100);
        assert_eq!(again.as_ptr(), ptr, "the same buffer, reused");
        assert_eq!(again.len(), 100);
        // A longer take from a shorter kept buffer: zeros past its old length.
        POOL.give(again);
        let longer = POOL.take(4096);
        assert_eq!(longer.len(), 4096);
        assert!(longer[100..].iter().all(|b| *b == 0));
    }

    #[test]
    fn the_pool_keeps_few_and_small_buffers() {
        static POOL: BufferPool = BufferPool::new(1, 1 << 16);
        POOL.give(vec![0; 1 << 17]);
        assert!(crate::sync::lock(&POOL.kept).is_empty(), "too large to keep");
        POOL.give(vec![0; 10]);
        POOL.give(vec![0; 10]);
        assert_eq!(crate::sync::lock(&POOL.kept).len(), 1, "one kept at most");
    }
}
