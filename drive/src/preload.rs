//! Warm-up: the files a job will read, named by a manifest, fetched into the node's block
//! cache before the job starts, so its first reads do not wait for the object store.
//!
//! A manifest has one entry per line (a line starting with `#` is a comment), each a workspace path whose
//! components may be:
//! - a name (`shot010`);
//! - a glob over one name (`*.exr`, `plate_?.dpx`, `[a-c]*`, `[!x]*`);
//! - `**`: any number of folders, this one included;
//! - a frame pattern (`sh010_comp.%04d.exr` or `sh010_comp.####.exr`) with the line's frame
//!   ranges at its end: `shot010/comp/sh010_comp.%04d.exr [1001-1240]` (several ranges:
//!   `[1001-1100,1150-1240]`). A frame that does not exist is reported missing.
//!
//! A path that names a folder preloads every file below it. Paths are resolved in the live
//! tree; only regular files are fetched.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt as _;

use crate::data::BlockStore;
use crate::error::MetaError;
use crate::model::{Attr, Name, NodeId, NodeKind, View};
use crate::ports::MetaStore;

/// Entries (after frame ranges are expanded) a manifest may name at most.
pub const MAX_EXPANDED: u64 = 1_000_000;

/// A parsed manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    entries: Vec<Entry>,
}

/// One line: its components, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    line: usize,
    text: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Name(Name),
    Glob(Vec<u8>),
    AnyDepth,
    /// `prefix`, the frame number zero-padded to `width`, `suffix`, for each frame.
    Frames {
        prefix: Vec<u8>,
        width: usize,
        suffix: Vec<u8>,
        ranges: Vec<(u64, u64)>,
    },
}

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("manifest line {line}: {message}")]
pub struct ManifestError {
    pub line: usize,
    pub message: String,
}

impl Manifest {
    /// Parses a manifest; the first bad line fails the whole manifest (nothing is fetched).
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let mut entries = Vec::new();
        let mut expanded = 0u64;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let err = |message: String| ManifestError { line, message };
            // Whole-line comments only: `#` also spells frame numbers (`####`).
            let content = raw.trim();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let (path, ranges) = match content.rsplit_once(" [") {
                Some((path, ranges)) => {
                    let ranges = ranges
                        .strip_suffix(']')
                        .ok_or_else(|| err("a frame range needs a closing ]".into()))?;
                    (path.trim(), Some(parse_ranges(ranges).map_err(err)?))
                }
                None => (content, None),
            };
            let mut parts = Vec::new();
            let mut frames_used = false;
            for component in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
                if component == ".." {
                    return Err(err("'..' is not allowed".into()));
                }
                let part = if component == "**" {
                    Part::AnyDepth
                } else if let Some((prefix, width, suffix)) = frame_pattern(component) {
                    let ranges = ranges
                        .clone()
                        .ok_or_else(|| err(format!("{component} is a frame pattern without [first-last]")))?;
                    if frames_used {
                        return Err(err("one frame pattern per line".into()));
                    }
                    frames_used = true;
                    expanded += ranges.iter().map(|(a, b)| b - a + 1).sum::<u64>();
                    Part::Frames {
                        prefix: prefix.into(),
                        width,
                        suffix: suffix.into(),
                        ranges,
                    }
                } else if component.contains(['*', '?', '[']) {
                    Part::Glob(component.as_bytes().to_vec())
                } else {
                    Part::Name(Name::parse(component).map_err(|e| err(e.to_string()))?)
                };
                parts.push(part);
            }
            if ranges.is_some() && !frames_used {
                return Err(err("frame ranges need a frame pattern (%04d or ####)".into()));
            }
            expanded += 1;
            if expanded > MAX_EXPANDED {
                return Err(err(format!(
                    "the manifest names more than {MAX_EXPANDED} entries"
                )));
            }
            entries.push(Entry {
                line,
                text: content.to_string(),
                parts,
            });
        }
        Ok(Manifest { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn parse_ranges(text: &str) -> Result<Vec<(u64, u64)>, String> {
    let mut out = Vec::new();
    for r in text.split(',') {
        let r = r.trim();
        let (a, b) = r.split_once('-').unwrap_or((r, r));
        let parse = |s: &str| {
            s.trim()
                .parse::<u64>()
                .map_err(|_| format!("frame range {r:?}: frames are whole numbers"))
        };
        let (a, b) = (parse(a)?, parse(b)?);
        if a > b {
            return Err(format!("frame range {r:?} ends before it starts"));
        }
        if b - a >= MAX_EXPANDED {
            return Err(format!("frame range {r:?} is longer than {MAX_EXPANDED} frames"));
        }
        out.push((a, b));
    }
    Ok(out)
}

/// `(prefix, width, suffix)` of `%0Nd` / `%d` / a run of `#`.
fn frame_pattern(component: &str) -> Option<(&str, usize, &str)> {
    if let Some(at) = component.find('%') {
        let rest = &component[at + 1..];
        let end = rest.find('d')?;
        let digits = &rest[..end];
        let width = if digits.is_empty() {
            1
        } else {
            digits.strip_prefix('0').unwrap_or(digits).parse().ok()?
        };
        return Some((&component[..at], width, &rest[end + 1..]));
    }
    let at = component.find('#')?;
    let width = component[at..].bytes().take_while(|b| *b == b'#').count();
    Some((&component[..at], width, &component[at + width..]))
}

/// Whether `name` matches the glob `pattern` (`*`, `?`, `[...]`, `[!...]`), byte-wise.
fn glob_matches(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.first() {
        None => name.is_empty(),
        Some(b'*') => (0..=name.len()).any(|i| glob_matches(&pattern[1..], &name[i..])),
        Some(b'?') => !name.is_empty() && glob_matches(&pattern[1..], &name[1..]),
        Some(b'[') => {
            let Some(close) = pattern.iter().skip(2).position(|b| *b == b']').map(|p| p + 2) else {
                return name.first() == Some(&b'[') && glob_matches(&pattern[1..], &name[1..]);
            };
            let Some(&c) = name.first() else { return false };
            let (negate, set) = match pattern[1] {
                b'!' | b'^' => (true, &pattern[2..close]),
                _ => (false, &pattern[1..close]),
            };
            let mut hit = false;
            let mut i = 0;
            while i < set.len() {
                if i + 2 < set.len() && set[i + 1] == b'-' {
                    hit |= set[i] <= c && c <= set[i + 2];
                    i += 3;
                } else {
                    hit |= set[i] == c;
                    i += 1;
                }
            }
            hit != negate && glob_matches(&pattern[close + 1..], &name[1..])
        }
        Some(&p) => name.first() == Some(&p) && glob_matches(&pattern[1..], &name[1..]),
    }
}

/// A file a manifest names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreloadFile {
    pub path: String,
    pub ino: NodeId,
    pub size: u64,
}

/// The files a manifest names, by path, and what it named that does not exist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    pub files: Vec<PreloadFile>,
    /// `line: path` of names and frames that are missing.
    pub missing: Vec<String>,
}

/// Entries read per directory page while resolving.
const PAGE: usize = 1_000;

/// Resolves `manifest` in the live tree below `root` (the workspace root).
pub async fn resolve<M: MetaStore>(
    meta: &M,
    root: NodeId,
    manifest: &Manifest,
) -> Result<Resolution, MetaError> {
    let mut files: BTreeMap<String, PreloadFile> = BTreeMap::new();
    let mut missing = Vec::new();
    for entry in &manifest.entries {
        // Frontier: (path, node) pairs matched so far.
        let mut at: Vec<(String, Attr)> = vec![(String::new(), meta.getattr(View::Live, root).await?)];
        for part in &entry.parts {
            let mut next = Vec::new();
            for (path, dir) in &at {
                if dir.kind != NodeKind::Directory {
                    continue;
                }
                match part {
                    Part::Name(name) => match meta.lookup(View::Live, dir.ino, name).await {
                        Ok(attr) => next.push((format!("{path}/{}", name.to_string_lossy()), attr)),
                        Err(MetaError::NotFound(_)) => {
                            missing.push(format!("{}: {path}/{}", entry.line, name.to_string_lossy()));
                        }
                        Err(e) => return Err(e),
                    },
                    Part::Frames {
                        prefix,
                        width,
                        suffix,
                        ranges,
                    } => {
                        for (first, last) in ranges {
                            for frame in *first..=*last {
                                let mut name = prefix.clone();
                                name.extend(format!("{frame:0width$}", width = *width).bytes());
                                name.extend(suffix);
                                let shown = String::from_utf8_lossy(&name).into_owned();
                                let Ok(name) = Name::parse(&name) else {
                                    missing.push(format!("{}: {path}/{shown}", entry.line));
                                    continue;
                                };
                                match meta.lookup(View::Live, dir.ino, &name).await {
                                    Ok(attr) => next.push((format!("{path}/{shown}"), attr)),
                                    Err(MetaError::NotFound(_)) => {
                                        missing.push(format!("{}: {path}/{shown}", entry.line));
                                    }
                                    Err(e) => return Err(e),
                                }
                            }
                        }
                    }
                    Part::Glob(pattern) => {
                        for (name, attr) in children(meta, dir.ino).await? {
                            if glob_matches(pattern, name.as_bytes()) {
                                next.push((format!("{path}/{}", name.to_string_lossy()), attr));
                            }
                        }
                    }
                    Part::AnyDepth => next.extend(folders_below(meta, path, dir).await?),
                }
            }
            at = next;
        }
        for (path, attr) in at {
            collect_files(meta, path, attr, &mut files).await?;
        }
    }
    Ok(Resolution {
        files: files.into_values().collect(),
        missing,
    })
}

async fn children<M: MetaStore>(meta: &M, dir: NodeId) -> Result<Vec<(Name, Attr)>, MetaError> {
    let mut out = Vec::new();
    let mut after: Option<Name> = None;
    loop {
        let page = meta.readdir_plus(View::Live, dir, after.as_ref(), PAGE).await?;
        let full = page.len() == PAGE;
        after = page.last().map(|e| e.entry.name.clone());
        out.extend(page.into_iter().map(|e| (e.entry.name, e.attr)));
        if !full {
            return Ok(out);
        }
    }
}

/// `dir` and every folder below it.
async fn folders_below<M: MetaStore>(
    meta: &M,
    path: &str,
    dir: &Attr,
) -> Result<Vec<(String, Attr)>, MetaError> {
    let mut out = vec![(path.to_string(), dir.clone())];
    let mut i = 0;
    while i < out.len() {
        let (p, d) = out[i].clone();
        for (name, attr) in children(meta, d.ino).await? {
            if attr.kind == NodeKind::Directory {
                out.push((format!("{p}/{}", name.to_string_lossy()), attr));
            }
        }
        i += 1;
    }
    Ok(out)
}

/// The regular file `attr`, or every regular file below the folder `attr`.
async fn collect_files<M: MetaStore>(
    meta: &M,
    path: String,
    attr: Attr,
    files: &mut BTreeMap<String, PreloadFile>,
) -> Result<(), MetaError> {
    match attr.kind {
        NodeKind::File => {
            let path = if path.is_empty() { "/".into() } else { path };
            files.insert(
                path.clone(),
                PreloadFile {
                    path,
                    ino: attr.ino,
                    size: attr.size,
                },
            );
        }
        NodeKind::Directory => {
            for (folder, dir) in folders_below(meta, &path, &attr).await? {
                for (name, child) in children(meta, dir.ino).await? {
                    if child.kind == NodeKind::File {
                        let path = format!("{folder}/{}", name.to_string_lossy());
                        files.insert(
                            path.clone(),
                            PreloadFile {
                                path,
                                ino: child.ino,
                                size: child.size,
                            },
                        );
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// What a preload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreloadReport {
    /// Files named, and their bytes.
    pub files: u64,
    pub bytes: u64,
    /// Files whose every block is now in the cache.
    pub done: u64,
    /// Blocks fetched from the object store, and those the cache already held.
    pub fetched_blocks: u64,
    pub cached_blocks: u64,
    /// `path: error` of files that could not be fetched, and names that are missing.
    pub failed: Vec<String>,
}

/// Progress counters a caller may watch while [`fetch`] runs.
#[derive(Debug, Default)]
pub struct Progress {
    pub done_files: AtomicU64,
    pub done_bytes: AtomicU64,
    /// Files that could not be fetched so far.
    pub failed_files: AtomicU64,
}

/// Longest preload name.
pub const MAX_NAME_LEN: usize = 253;

/// Checks a preload's name (what `preload --report-as` records and a volume's `preload`
/// attribute waits for): 1 to 253 characters of ASCII letters, digits, '-', '.', '_' and
/// '/' (room for `namespace/name` of a Preload resource), starting and ending with a letter
/// or digit. Pure; the message names the rule.
pub fn validate_name(name: &str) -> Result<(), String> {
    let edge = |b: Option<&u8>| b.is_some_and(u8::is_ascii_alphanumeric);
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && edge(name.as_bytes().first())
        && edge(name.as_bytes().last())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'/'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "preload name {:?}: 1 to {MAX_NAME_LEN} characters of letters, digits, '-', '.', '_' \
             and '/', starting and ending with a letter or digit",
            name.chars().take(64).collect::<String>()
        ))
    }
}

/// Fetches every block of `files` into `blocks`' disk cache (verifying each, as a read
/// would), `parallel` blocks at a time. A file that fails is reported and the others go on.
/// Without a disk cache there is nothing to warm: every file fails saying so.
pub async fn fetch<M: MetaStore>(
    meta: &M,
    blocks: &BlockStore<M>,
    block_size: u64,
    files: &[PreloadFile],
    parallel: usize,
    progress: Arc<Progress>,
) -> PreloadReport {
    let mut report = PreloadReport {
        files: files.len() as u64,
        bytes: files.iter().map(|f| f.size).sum(),
        ..PreloadReport::default()
    };
    let Some(cache) = blocks.cache().cloned() else {
        report.failed = files
            .iter()
            .map(|f| format!("{}: the mount has no disk cache to preload into", f.path))
            .collect();
        return report;
    };
    let results = futures::stream::iter(files.iter())
        .map(|file| {
            let cache = cache.clone();
            let progress = progress.clone();
            async move {
                let count = file.size.div_ceil(block_size.max(1));
                let map = meta.block_map(View::Live, file.ino, 0, count).await;
                let map = match map {
                    Ok(map) => map,
                    Err(e) => {
                        progress.failed_files.fetch_add(1, Ordering::Relaxed);
                        return (file, Err(e.to_string()), 0, 0);
                    }
                };
                let (mut fetched, mut cached) = (0, 0);
                for block in map {
                    if cache.contains(&block.hash) {
                        cached += 1;
                        continue;
                    }
                    if let Err(e) = blocks.get(block.hash).await {
                        progress.failed_files.fetch_add(1, Ordering::Relaxed);
                        return (file, Err(e.to_string()), fetched, cached);
                    }
                    // A cache below its free-space floor (or smaller than the block) serves
                    // the read without keeping the block: not preloaded, and said so.
                    if !cache.contains(&block.hash) {
                        progress.failed_files.fetch_add(1, Ordering::Relaxed);
                        let why = "fetched, but the cache did not keep it (cache size, or its file \
                                   system below the free-space floor)";
                        return (file, Err(why.to_string()), fetched, cached);
                    }
                    fetched += 1;
                }
                progress.done_files.fetch_add(1, Ordering::Relaxed);
                progress.done_bytes.fetch_add(file.size, Ordering::Relaxed);
                (file, Ok(()), fetched, cached)
            }
        })
        .buffer_unordered(parallel.max(1))
        .collect::<Vec<_>>()
        .await;
    for (file, result, fetched, cached) in results {
        report.fetched_blocks += fetched;
        report.cached_blocks += cached;
        match result {
            Ok(()) => report.done += 1,
            Err(e) => report.failed.push(format!("{}: {e}", file.path)),
        }
    }
    report.failed.sort();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_parse_names_globs_depth_and_frame_ranges() {
        let m = Manifest::parse(
            "# plates\nshot010/plates\n/shot010/comp/*.exr\n**/notes.txt\nshot010/comp/sh010_comp.%04d.exr [1001-1003,1010]\nshot020/sh020.####.dpx [7-8]  \n",
        )
        .unwrap();
        assert_eq!(m.entries.len(), 5);
        assert_eq!(m.entries[0].parts.len(), 2);
        assert!(matches!(m.entries[1].parts[2], Part::Glob(_)));
        assert_eq!(m.entries[2].parts[0], Part::AnyDepth);
        match &m.entries[3].parts[2] {
            Part::Frames {
                prefix,
                width,
                suffix,
                ranges,
            } => {
                assert_eq!(prefix, b"sh010_comp.");
                assert_eq!(*width, 4);
                assert_eq!(suffix, b".exr");
                assert_eq!(ranges, &[(1001, 1003), (1010, 1010)]);
            }
            other => panic!("{other:?}"),
        }
        match &m.entries[4].parts[1] {
            Part::Frames { width, ranges, .. } => {
                assert_eq!(*width, 4);
                assert_eq!(ranges, &[(7, 8)]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_manifest_lines_are_refused_with_their_line() {
        for (text, line) in [
            ("ok\n../etc/passwd", 2),
            ("a/b.%04d.exr", 1),
            ("a/b.exr [1-2]", 1),
            ("a/b.%04d.exr [5-1]", 1),
            ("a/b.%04d.exr [x-2]", 1),
            ("a/b.%04d.exr [1-2", 1),
            ("a/b.%04d.exr [0-2000000]", 1),
        ] {
            let err = Manifest::parse(text).unwrap_err();
            assert_eq!(err.line, line, "{text:?}: {err}");
        }
    }

    #[test]
    fn preload_names_are_kubernetes_like() {
        for ok in ["shot010", "vfx/shot010.comp", "a", "A_1-b"] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
        let long = "a".repeat(MAX_NAME_LEN + 1);
        for bad in [
            "",
            "-a",
            "a/",
            "a b",
            "a\nb",
            "sh\u{e9}",
            "../x.",
            long.as_str(),
            "a;b",
            "a\0",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn globs_match_whole_names() {
        assert!(glob_matches(b"*.exr", b"a.exr"));
        assert!(!glob_matches(b"*.exr", b"a.exr.bak"));
        assert!(glob_matches(b"plate_?.dpx", b"plate_1.dpx"));
        assert!(!glob_matches(b"plate_?.dpx", b"plate_12.dpx"));
        assert!(glob_matches(b"[a-c]*", b"beta"));
        assert!(!glob_matches(b"[!a-c]*", b"beta"));
        assert!(glob_matches(b"*", b""));
    }
}
