//! Frame sequences: files named like `shot010.1001.exr` summarised as
//! `shot010.%04d.exr [1001-1240,1250-1300]`.
//!
//! A frame name is split at its last run of decimal digits that is followed only by an
//! extension-like suffix (empty, or starting with '.' and holding no digits). The digit count
//! is the padding: `0999` and `1000` share padding 4, while `999` (padding 3) is a different
//! sequence, matching how `%04d` patterns are written by render tools.

use std::fmt;

/// The identity of a sequence within one folder.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SequenceKey {
    pub prefix: Vec<u8>,
    pub padding: u32,
    pub suffix: Vec<u8>,
}

/// A name recognised as one frame of a sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameName {
    pub key: SequenceKey,
    pub frame: i64,
}

/// An inclusive run of consecutive frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FrameRange {
    pub first: i64,
    pub last: i64,
}

/// A sequence summary: its pattern and frame runs in ascending order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameSequence {
    pub key: SequenceKey,
    pub ranges: Vec<FrameRange>,
}

/// Longest digit run accepted as a frame number (fits in i64).
const MAX_FRAME_DIGITS: usize = 18;

impl FrameName {
    /// Recognises `name` as a frame, or returns `None`.
    pub fn parse(name: &[u8]) -> Option<FrameName> {
        let end = name.iter().rposition(u8::is_ascii_digit)? + 1;
        let start = name[..end]
            .iter()
            .rposition(|b| !b.is_ascii_digit())
            .map_or(0, |i| i + 1);
        let suffix = &name[end..];
        if !(suffix.is_empty() || suffix[0] == b'.') {
            return None;
        }
        let digits = &name[start..end];
        if digits.len() > MAX_FRAME_DIGITS {
            return None;
        }
        let frame = std::str::from_utf8(digits).ok()?.parse::<i64>().ok()?;
        let padding = u32::try_from(digits.len()).ok()?;
        Some(FrameName {
            key: SequenceKey {
                prefix: name[..start].to_vec(),
                padding,
                suffix: suffix.to_vec(),
            },
            frame,
        })
    }
}

impl FrameSequence {
    /// Adds `frame` to the runs, merging neighbours. Adding a present frame changes nothing.
    pub fn add_frame(&mut self, frame: i64) {
        let i = self.ranges.partition_point(|r| r.last < frame);
        if i < self.ranges.len() && self.ranges[i].first <= frame {
            return;
        }
        let joins_left = i > 0 && self.ranges[i - 1].last + 1 == frame;
        let joins_right = i < self.ranges.len() && self.ranges[i].first == frame + 1;
        match (joins_left, joins_right) {
            (true, true) => {
                self.ranges[i - 1].last = self.ranges[i].last;
                self.ranges.remove(i);
            }
            (true, false) => self.ranges[i - 1].last = frame,
            (false, true) => self.ranges[i].first = frame,
            (false, false) => self.ranges.insert(
                i,
                FrameRange {
                    first: frame,
                    last: frame,
                },
            ),
        }
    }

    /// Removes `frame` from the runs, splitting its run. Removing an absent frame changes
    /// nothing.
    pub fn remove_frame(&mut self, frame: i64) {
        let i = self.ranges.partition_point(|r| r.last < frame);
        let Some(r) = self.ranges.get(i).copied() else {
            return;
        };
        if r.first > frame {
            return;
        }
        match (r.first == frame, r.last == frame) {
            (true, true) => {
                self.ranges.remove(i);
            }
            (true, false) => self.ranges[i].first = frame + 1,
            (false, true) => self.ranges[i].last = frame - 1,
            (false, false) => {
                self.ranges[i].last = frame - 1;
                self.ranges.insert(
                    i + 1,
                    FrameRange {
                        first: frame + 1,
                        last: r.last,
                    },
                );
            }
        }
    }

    /// Number of frames in the sequence.
    pub fn frame_count(&self) -> u64 {
        self.ranges.iter().map(|r| (r.last - r.first + 1) as u64).sum()
    }
}

impl fmt::Display for SequenceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}%0{}d{}",
            String::from_utf8_lossy(&self.prefix),
            self.padding,
            String::from_utf8_lossy(&self.suffix)
        )
    }
}

impl fmt::Display for FrameSequence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [", self.key)?;
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if r.first == r.last {
                write!(f, "{}", r.first)?;
            } else {
                write!(f, "{}-{}", r.first, r.last)?;
            }
        }
        f.write_str("]")
    }
}

/// Summarises names into sequences by scanning them all: the reference the incremental
/// store-side maintenance is tested against.
pub fn summarize<'a>(names: impl IntoIterator<Item = &'a [u8]>) -> Vec<FrameSequence> {
    let mut by_key: std::collections::BTreeMap<SequenceKey, Vec<i64>> = Default::default();
    for name in names {
        if let Some(f) = FrameName::parse(name) {
            by_key.entry(f.key).or_default().push(f.frame);
        }
    }
    by_key
        .into_iter()
        .map(|(key, mut frames)| {
            frames.sort_unstable();
            frames.dedup();
            let mut ranges: Vec<FrameRange> = Vec::new();
            for frame in frames {
                match ranges.last_mut() {
                    Some(r) if r.last + 1 == frame => r.last = frame,
                    _ => ranges.push(FrameRange {
                        first: frame,
                        last: frame,
                    }),
                }
            }
            FrameSequence { key, ranges }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn incremental_runs_equal_a_fresh_summary(ops in proptest::collection::vec((0i64..40, proptest::bool::ANY), 0..200)) {
            let key = SequenceKey { prefix: b"s.".to_vec(), padding: 4, suffix: b".exr".to_vec() };
            let mut seq = FrameSequence { key: key.clone(), ranges: Vec::new() };
            let mut set = std::collections::BTreeSet::new();
            for (frame, add) in ops {
                if add { seq.add_frame(frame); set.insert(frame); } else { seq.remove_frame(frame); set.remove(&frame); }
                let names: Vec<Vec<u8>> = set.iter().map(|f| format!("s.{f:04}.exr").into_bytes()).collect();
                let fresh = summarize(names.iter().map(Vec::as_slice));
                let expected = fresh.first().map(|s| s.ranges.clone()).unwrap_or_default();
                proptest::prop_assert_eq!(&seq.ranges, &expected);
            }
        }
    }

    #[test]
    fn frame_names_split_at_the_last_digit_run() {
        let f = FrameName::parse(b"shot010.1001.exr").unwrap();
        assert_eq!(f.key.prefix, b"shot010.");
        assert_eq!(f.key.padding, 4);
        assert_eq!(f.key.suffix, b".exr");
        assert_eq!(f.frame, 1001);
        let f = FrameName::parse(b"render_0007").unwrap();
        assert_eq!(
            (f.key.prefix.as_slice(), f.frame, f.key.padding),
            (&b"render_"[..], 7, 4)
        );
        assert_eq!(FrameName::parse(b"notes.txt"), None);
        assert_eq!(FrameName::parse(b"v2x"), None);
        assert_eq!(FrameName::parse(b"a.1234567890123456789.exr"), None);
    }

    #[test]
    fn summaries_group_runs_and_padding() {
        let names: Vec<Vec<u8>> = (1001..=1240)
            .chain(1250..=1300)
            .map(|i| format!("shot010.{i:04}.exr").into_bytes())
            .chain([b"shot010.999.exr".to_vec(), b"readme.md".to_vec()])
            .collect();
        let seqs = summarize(names.iter().map(Vec::as_slice));
        let text: Vec<String> = seqs.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            vec!["shot010.%03d.exr [999]", "shot010.%04d.exr [1001-1240,1250-1300]"]
        );
        assert_eq!(seqs[1].frame_count(), 240 + 51);
    }
}
