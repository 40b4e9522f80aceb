//! A local directory as the object store: the embedded default.
//!
//! Crash safety: an object is written to a temp file in the same file system, fsynced, then
//! renamed into place and its directory fsynced, so a crash leaves either no object or the
//! whole object, never a torn one. Leftover temp files are removed at open.
//!
//! Objects of a megabyte or more are written with O_DIRECT from an aligned buffer: the
//! kernel's copy into the page cache was 45% of a mount's CPU while writing (perf, issue 21),
//! and the object is fsynced at once anyway, so the cached copy bought nothing. File systems
//! without direct I/O (tmpfs) get the buffered write.
//!
//! Objects of a megabyte or more are read into, and written from, buffers kept for reuse
//! ([`BufferPool`]): a fresh block-sized buffer costs a page fault and a zeroed page per
//! 4 KiB.

use std::io::Write as _;
use std::ops::Range;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::FutureExt as _;
use futures::future::BoxFuture;

use crate::data::pool::BufferPool;
use crate::data::store::{ChunkStore, ListedObject, StoreError};
use crate::private_files;

/// Objects as files under a root directory.
#[derive(Debug, Clone)]
pub struct LocalChunkStore {
    root: PathBuf,
}

const TMP_DIR: &str = ".tmp";

impl LocalChunkStore {
    /// Opens (creating) a store rooted at `root`; removes temp files a crash left behind.
    pub fn open(root: impl Into<PathBuf>) -> std::io::Result<LocalChunkStore> {
        let root = root.into();
        let tmp = root.join(TMP_DIR);
        private_files::create_dir_all(&tmp)?;
        for entry in std::fs::read_dir(&tmp)? {
            let _ = std::fs::remove_file(entry?.path());
        }
        Ok(LocalChunkStore { root })
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        // Keys are ours, but a key must never escape the root.
        let valid = !key.is_empty()
            && !key.starts_with('/')
            && key
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'));
        if !valid || key.starts_with(TMP_DIR) {
            return Err(StoreError::Failed {
                op: "resolve",
                key: key.to_string(),
                message: "invalid object key".into(),
                source: None,
            });
        }
        Ok(self.root.join(key))
    }
}

fn io_error(op: &'static str, key: &str, e: std::io::Error) -> StoreError {
    if e.kind() == std::io::ErrorKind::NotFound {
        return StoreError::NotFound { key: key.to_string() };
    }
    if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) {
        return StoreError::NoSpace {
            op,
            key: key.to_string(),
            message: e.to_string(),
            source: Some(e.into()),
        };
    }
    StoreError::Unavailable {
        op,
        key: key.to_string(),
        message: e.to_string(),
        source: Some(e.into()),
    }
}

/// Objects at least this long are written with O_DIRECT, and read into pooled buffers.
const LARGE_OBJECT: usize = 1 << 20;
/// Alignment of direct writes (address, offset, length): a page, which covers every logical
/// block size.
const DIRECT_ALIGN: usize = 4096;
/// Buffers of large objects, read or written: at most 4 of at most 8 MiB stay allocated (a
/// 4 MiB block's object fits, padded and aligned), whatever the block size.
static BUFFERS: BufferPool = BufferPool::new(4, 8 << 20);

/// Writes `data` into a new file `tmp`, directly when it is large and the file system can.
fn write_object(tmp: &Path, data: &[u8]) -> std::io::Result<std::fs::File> {
    if data.len() >= LARGE_OBJECT {
        let direct = private_files::create_direct(tmp).and_then(|f| write_direct(&f, data).map(|()| f));
        match direct {
            Ok(f) => return Ok(f),
            // No direct I/O here (or not at this alignment): the buffered write below.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    let mut f = private_files::create(tmp)?;
    f.write_all(data)?;
    Ok(f)
}

/// Writes `data` to the empty direct-I/O file `f`: padded with zeros to the alignment from an
/// aligned buffer, then cut back to its length.
fn write_direct(f: &std::fs::File, data: &[u8]) -> std::io::Result<()> {
    let padded = data.len().div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
    let mut buf = BUFFERS.take(padded + DIRECT_ALIGN);
    let at = buf.as_ptr().align_offset(DIRECT_ALIGN);
    let written = if at < DIRECT_ALIGN {
        let window = &mut buf[at..at + padded];
        window[..data.len()].copy_from_slice(data);
        window[data.len()..].fill(0);
        f.write_all_at(window, 0)
            .and_then(|()| f.set_len(data.len() as u64))
    } else {
        Err(std::io::Error::from_raw_os_error(libc::EINVAL))
    };
    BUFFERS.give(buf);
    written
}

/// Reads object `path` whole (a large one into a pooled buffer). Objects are never rewritten
/// in place (a new one is renamed over), so the length read is the object's; a short read
/// can only be a damaged file, which decoding refuses.
fn read_object(path: &Path) -> std::io::Result<Bytes> {
    let file = std::fs::File::open(path)?;
    let len = usize::try_from(file.metadata()?.len()).map_err(|_| std::io::ErrorKind::FileTooLarge)?;
    if len < LARGE_OBJECT {
        return read_into(&file, vec![0u8; len], 0).map(Bytes::from);
    }
    read_into(&file, BUFFERS.take(len), 0).map(|buf| BUFFERS.bytes(buf))
}

/// Fills `buf` from `offset` of `file`, cut short where the file ends.
fn read_into(file: &std::fs::File, mut buf: Vec<u8>, offset: u64) -> std::io::Result<Vec<u8>> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

fn write_atomically(root: &Path, path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = root.join(TMP_DIR).join(uuid::Uuid::new_v4().simple().to_string());
    let result = (|| {
        let f = write_object(&tmp, data)?;
        f.sync_all()?;
        let parent = path.parent().expect("object paths have a parent");
        create_dir_durably(parent)?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(parent)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Creates `dir` and its missing ancestors, each made durable by an fsync of its parent (a new
/// directory's entry is not durable until its parent is synced, so an object renamed into it
/// could vanish with it after a power cut). A directory that already exists costs one `stat`;
/// one that a concurrent put created first is synced here too, since that put may not have
/// synced its parent yet.
fn create_dir_durably(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().unwrap_or(dir);
    if let Err(e) = private_files::create_dir(dir) {
        match e.kind() {
            std::io::ErrorKind::AlreadyExists => {}
            std::io::ErrorKind::NotFound if parent != dir => {
                create_dir_durably(parent)?;
                if let Err(e) = private_files::create_dir(dir)
                    && e.kind() != std::io::ErrorKind::AlreadyExists
                {
                    return Err(e);
                }
            }
            _ => return Err(e),
        }
    }
    std::fs::File::open(parent)?.sync_all()
}

async fn blocking<T: Send + 'static>(
    op: &'static str,
    key: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| io_error(op, key, e)),
        Err(e) => Err(StoreError::Failed {
            op,
            key: key.to_string(),
            message: "I/O task failed".into(),
            source: Some(e.into()),
        }),
    }
}

/// Appends to `page`, in key order, the objects under `dir` whose keys start with `prefix`
/// and sort after `after`, until it holds `limit`; directories that can hold no such key are
/// not read.
fn list_sorted(
    root: &Path,
    dir: &Path,
    (prefix, after, limit): (&str, Option<&str>, usize),
    page: &mut Vec<ListedObject>,
) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    // (the key, or a directory's key prefix ending in '/'; the path; the file's size)
    let mut sorted = Vec::new();
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let rel = path
            .strip_prefix(root)
            .expect("under root")
            .to_string_lossy()
            .into_owned();
        if rel == TMP_DIR {
            continue;
        }
        let meta = entry.metadata()?;
        if meta.is_dir() {
            sorted.push((format!("{rel}/"), path, None));
        } else {
            sorted.push((rel, path, Some(meta.len())));
        }
    }
    sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (key, path, size) in sorted {
        if page.len() >= limit {
            break;
        }
        match size {
            None => {
                let may_match = key.starts_with(prefix) || prefix.starts_with(&key);
                // Every key below sorts before `after` when the directory does and `after` is
                // not below it.
                let all_before = after.is_some_and(|a| key.as_str() < a && !a.starts_with(&key));
                if may_match && !all_before {
                    list_sorted(root, &path, (prefix, after, limit), page)?;
                }
            }
            Some(size) => {
                if key.starts_with(prefix) && after.is_none_or(|a| key.as_str() > a) {
                    page.push(ListedObject { key, size });
                }
            }
        }
    }
    Ok(())
}

impl ChunkStore for LocalChunkStore {
    fn put<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let path = self.path(key)?;
            let root = self.root.clone();
            blocking("put", key, move || write_atomically(&root, &path, &data)).await
        }
        .boxed()
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Bytes, StoreError>> {
        async move {
            let path = self.path(key)?;
            blocking("get", key, move || read_object(&path)).await
        }
        .boxed()
    }

    fn get_range<'a>(&'a self, key: &'a str, range: Range<u64>) -> BoxFuture<'a, Result<Bytes, StoreError>> {
        async move {
            let path = self.path(key)?;
            blocking("get", key, move || {
                let file = std::fs::File::open(path)?;
                let len = range.end.saturating_sub(range.start) as usize;
                read_into(&file, vec![0u8; len], range.start).map(Bytes::from)
            })
            .await
        }
        .boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let path = self.path(key)?;
            match blocking("delete", key, move || std::fs::remove_file(path)).await {
                Err(StoreError::NotFound { .. }) => Ok(()),
                other => other,
            }
        }
        .boxed()
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        async move {
            let root = self.root.clone();
            let prefix_owned = prefix.to_string();
            blocking("list", prefix, move || {
                let mut keys = Vec::new();
                let mut stack = vec![root.clone()];
                while let Some(dir) = stack.pop() {
                    let entries = match std::fs::read_dir(&dir) {
                        Ok(e) => e,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e),
                    };
                    for entry in entries {
                        let entry = entry?;
                        let path = entry.path();
                        let rel = path
                            .strip_prefix(&root)
                            .expect("under root")
                            .to_string_lossy()
                            .into_owned();
                        if rel == TMP_DIR {
                            continue;
                        }
                        if entry.file_type()?.is_dir() {
                            stack.push(path);
                        } else if rel.starts_with(&prefix_owned) {
                            keys.push(rel);
                        }
                    }
                }
                Ok(keys)
            })
            .await
        }
        .boxed()
    }

    fn list_page<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ListedObject>, StoreError>> {
        async move {
            let root = self.root.clone();
            let (prefix_owned, after) = (prefix.to_string(), after.map(str::to_string));
            blocking("list", prefix, move || {
                let mut page = Vec::new();
                let bounds = (prefix_owned.as_str(), after.as_deref(), limit);
                list_sorted(&root, &root, bounds, &mut page)?;
                Ok(page)
            })
            .await
        }
        .boxed()
    }

    fn is_local(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }
}
