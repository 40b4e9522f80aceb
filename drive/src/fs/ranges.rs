//! A small set of byte ranges within one block: which parts a write session has written, so
//! that the old block is only read for the gaps (read-modify-write) and a fully written block
//! can be uploaded without reading anything.

/// Disjoint, sorted, non-adjacent half-open ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Ranges(Vec<(u64, u64)>);

impl Ranges {
    /// The single range `[start, end)` (empty when `start >= end`).
    pub(crate) fn of(start: u64, end: u64) -> Ranges {
        let mut r = Ranges::default();
        r.insert(start, end);
        r
    }

    /// Adds `[start, end)`, merging with overlapping or touching ranges.
    pub(crate) fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut s, mut e) = (start, end);
        let mut out = Vec::with_capacity(self.0.len() + 1);
        for &(a, b) in &self.0 {
            if b < s || a > e {
                out.push((a, b));
            } else {
                s = s.min(a);
                e = e.max(b);
            }
        }
        out.push((s, e));
        out.sort_unstable();
        self.0 = out;
    }

    /// Removes everything at or after `at`.
    pub(crate) fn cut(&mut self, at: u64) {
        self.0.retain(|&(a, _)| a < at);
        if let Some(last) = self.0.last_mut() {
            last.1 = last.1.min(at);
        }
    }

    /// Whether `[0, len)` is entirely covered.
    pub(crate) fn covers(&self, len: u64) -> bool {
        len == 0 || self.0.first().is_some_and(|&(a, b)| a == 0 && b >= len)
    }

    /// The parts of `[0, limit)` not covered.
    pub(crate) fn gaps(&self, limit: u64) -> Vec<(u64, u64)> {
        let mut gaps = Vec::new();
        let mut pos = 0;
        for &(a, b) in &self.0 {
            if a >= limit {
                break;
            }
            if a > pos {
                gaps.push((pos, a));
            }
            pos = pos.max(b);
        }
        if pos < limit {
            gaps.push((pos, limit));
        }
        gaps
    }
}

#[cfg(test)]
mod tests {
    use super::Ranges;

    #[test]
    fn merges_and_reports_gaps() {
        let mut r = Ranges::default();
        r.insert(10, 20);
        r.insert(30, 40);
        assert_eq!(r.gaps(50), vec![(0, 10), (20, 30), (40, 50)]);
        r.insert(20, 30);
        assert_eq!(r, Ranges::of(10, 40));
        r.insert(0, 10);
        assert!(r.covers(40));
        assert!(!r.covers(41));
        r.cut(25);
        assert_eq!(r, Ranges::of(0, 25));
        assert_eq!(r.gaps(20), Vec::<(u64, u64)>::new());
    }

    #[test]
    fn empty_ranges_cover_nothing_but_zero() {
        let r = Ranges::default();
        assert!(r.covers(0));
        assert!(!r.covers(1));
        assert_eq!(r.gaps(5), vec![(0, 5)]);
    }
}
