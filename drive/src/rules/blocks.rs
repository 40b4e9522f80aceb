//! Block arithmetic: which blocks a byte range covers, and what a file keeps when it shrinks.
//! The read path, the write pipeline and both metadata stores use these, so a boundary
//! (the last byte of a block, a size on a block edge) is handled one way everywhere.

use std::ops::Range;

/// The part of a byte range that lies in one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSpan {
    /// The block's index.
    pub idx: u64,
    /// Where the part starts inside the block.
    pub in_block: u64,
    /// Where the part starts inside the range.
    pub in_range: u64,
    /// Its length (at least 1).
    pub len: u64,
}

impl BlockSpan {
    /// The part's place in a buffer holding the whole range.
    pub fn in_buffer(&self) -> Range<usize> {
        self.in_range as usize..(self.in_range + self.len) as usize
    }
}

/// The parts of `[offset, end)`, block by block, in order (none when the range is empty).
pub fn spans(offset: u64, end: u64, block_size: u64) -> impl Iterator<Item = BlockSpan> {
    assert!(block_size > 0, "a block size is positive");
    let mut pos = offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let in_block = pos % block_size;
        let span = BlockSpan {
            idx: pos / block_size,
            in_block,
            in_range: pos - offset,
            len: (block_size - in_block).min(end - pos),
        };
        pos += span.len;
        Some(span)
    })
}

/// What a file keeps when it shrinks to a new size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shrink {
    /// Blocks with an index below this stay; the others go.
    pub keep: u64,
    /// The block the new end falls inside, and how many of its bytes stay (none when the
    /// new size is on a block edge).
    pub tail: Option<(u64, u64)>,
}

/// What a file of blocks of `block_size` keeps at `new_size`.
pub fn shrink(new_size: u64, block_size: u64) -> Shrink {
    assert!(block_size > 0, "a block size is positive");
    let tail = new_size % block_size;
    Shrink {
        keep: new_size.div_ceil(block_size),
        tail: (tail != 0).then_some((new_size / block_size, tail)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_cover_the_range_exactly_once() {
        for (offset, end) in [(0, 0), (0, 1), (0, 10), (9, 10), (3, 27), (10, 20), (19, 41)] {
            let parts: Vec<BlockSpan> = spans(offset, end, 10).collect();
            assert_eq!(
                parts.iter().map(|s| s.len).sum::<u64>(),
                end.saturating_sub(offset)
            );
            let mut at = offset;
            for s in &parts {
                assert_eq!(s.idx * 10 + s.in_block, at, "{offset}..{end}: {parts:?}");
                assert_eq!(s.in_range, at - offset);
                assert!(s.in_block + s.len <= 10);
                at += s.len;
            }
        }
        assert_eq!(
            spans(19, 41, 10)
                .map(|s| (s.idx, s.in_block, s.len))
                .collect::<Vec<_>>(),
            vec![(1, 9, 1), (2, 0, 10), (3, 0, 10), (4, 0, 1)]
        );
    }

    #[test]
    fn shrink_keeps_whole_blocks_and_cuts_the_last() {
        assert_eq!(shrink(0, 10), Shrink { keep: 0, tail: None });
        assert_eq!(shrink(10, 10), Shrink { keep: 1, tail: None });
        assert_eq!(
            shrink(11, 10),
            Shrink {
                keep: 2,
                tail: Some((1, 1))
            }
        );
        assert_eq!(
            shrink(29, 10),
            Shrink {
                keep: 3,
                tail: Some((2, 9))
            }
        );
    }
}
