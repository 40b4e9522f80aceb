//! The technical-metadata extractor of a mount: when a file's content is committed, a
//! background task reads its header (never the pixels: at most
//! [`technical::MAX_READ_BYTES`]) and, for OpenEXR, DPX and QuickTime/MP4, files a document in
//! the built-in `studiodrive/technical` DataStore under the media id
//! `{"workspace": <name>, "node": <inode>}`, attached to the file (so it follows renames and
//! goes with the file's purge).
//!
//! It never slows the closing process: the observer only queues the file (and a new file not
//! named like a media file is not even read). At most
//! [`MAX_PENDING`] files wait; beyond that new ones are skipped and counted. A document equal
//! to the file's latest one is not written again (a rewrite with the same header).

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use super::technical::{self, ByteSource};
use crate::fs::{BlockIo, CommitObserver};
use crate::meta::{PgMetaStore, Versions};
use crate::model::{Attr, Name, NodeId, NodeKind, View, WorkspaceId};
use crate::sync::lock;

/// Name endings of the formats read. A new file named otherwise is not read at all (its
/// first block is not fetched); a rewritten file, whose name the commit does not carry, is
/// recognised by its first bytes.
const MEDIA_EXTENSIONS: &[&str] = &["exr", "dpx", "mov", "qt", "mp4", "m4v"];

fn may_be_media(name: &Name) -> bool {
    let name = name.to_string_lossy();
    name.rsplit_once('.')
        .is_some_and(|(_, ext)| MEDIA_EXTENSIONS.iter().any(|m| ext.eq_ignore_ascii_case(m)))
}

/// Files waiting for extraction at most; more are skipped (and counted).
pub const MAX_PENDING: usize = 1024;
/// Extractions running at once per mount.
const PARALLEL: usize = 2;

/// What the extractor did, for metrics and tests.
#[derive(Debug, Default)]
pub struct ExtractStats {
    /// Documents written.
    pub written: AtomicU64,
    /// Files of a known format whose document was already current.
    pub unchanged: AtomicU64,
    /// Files of no known format.
    pub other: AtomicU64,
    /// Files that claimed a format but whose header could not be read, or whose document
    /// could not be stored.
    pub failed: AtomicU64,
    /// Files skipped because too many were waiting.
    pub skipped: AtomicU64,
}

/// The extractor of one mount's workspace.
pub struct TechnicalExtractor<B: BlockIo> {
    inner: Arc<Inner<B>>,
}

struct Inner<B: BlockIo> {
    meta: PgMetaStore,
    blocks: Arc<B>,
    workspace: WorkspaceId,
    workspace_name: String,
    block_size: u64,
    runtime: tokio::runtime::Handle,
    running: Semaphore,
    pending: AtomicU64,
    stats: ExtractStats,
}

impl<B: BlockIo> std::fmt::Debug for TechnicalExtractor<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TechnicalExtractor")
            .field("workspace", &self.inner.workspace_name)
            .finish()
    }
}

impl<B: BlockIo> TechnicalExtractor<B> {
    /// An extractor for `workspace`, after making sure the built-in DataStore exists as this
    /// version defines it.
    pub async fn start(
        meta: PgMetaStore,
        blocks: Arc<B>,
        workspace: &crate::model::Workspace,
    ) -> Result<TechnicalExtractor<B>, crate::error::MetaError> {
        let spec = technical::technical_datastore();
        meta.put_media_datastore(&spec).await?;
        Ok(TechnicalExtractor {
            inner: Arc::new(Inner {
                meta,
                blocks,
                workspace: workspace.id,
                workspace_name: workspace.name.clone(),
                block_size: u64::from(workspace.block_size).max(1),
                runtime: tokio::runtime::Handle::current(),
                running: Semaphore::new(PARALLEL),
                pending: AtomicU64::new(0),
                stats: ExtractStats::default(),
            }),
        })
    }

    pub fn stats(&self) -> &ExtractStats {
        &self.inner.stats
    }

    /// The media id of a file's technical document.
    pub fn media_id(workspace: &str, node: NodeId) -> Value {
        json!({"workspace": workspace, "node": node.0})
    }

    /// Extracts `ino` now (what a commit queues); the document id written, if any.
    pub async fn extract(&self, ino: NodeId, size: u64, name: Option<String>) -> Option<uuid::Uuid> {
        extract_file(self.inner.clone(), ino, size, name).await
    }
}

impl<B: BlockIo> CommitObserver for TechnicalExtractor<B> {
    fn committed(&self, attr: &Attr, name: Option<&Name>) {
        if attr.kind != NodeKind::File || attr.size < technical::DETECT_BYTES {
            return;
        }
        if name.is_some_and(|n| !may_be_media(n)) {
            self.inner.stats.other.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let inner = self.inner.clone();
        if inner.pending.fetch_add(1, Ordering::Relaxed) >= MAX_PENDING as u64 {
            inner.pending.fetch_sub(1, Ordering::Relaxed);
            inner.stats.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let (ino, size) = (attr.ino, attr.size);
        let name = name.map(Name::to_string_lossy);
        self.inner.runtime.spawn(async move {
            let _permit = inner.running.acquire().await;
            extract_file(inner.clone(), ino, size, name).await;
            inner.pending.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn extract_file<B: BlockIo>(
    inner: Arc<Inner<B>>,
    ino: NodeId,
    size: u64,
    name: Option<String>,
) -> Option<uuid::Uuid> {
    let source = FileSource {
        inner: inner.clone(),
        ino,
        size,
        blocks: Mutex::new(HashMap::new()),
    };
    let found = tokio::task::spawn_blocking(move || {
        // `detect` looks at the first bytes only; `extract` then reads the header it needs.
        let first = source.read_at(0, technical::DETECT_BYTES as usize).ok()?;
        technical::detect(name.as_deref().unwrap_or(""), &first)?;
        Some(technical::extract(&source))
    })
    .await;
    let stats = &inner.stats;
    let technical = match found {
        Ok(None) | Ok(Some(Ok(None))) => {
            stats.other.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Ok(Some(Ok(Some(t)))) => t,
        Ok(Some(Err(e))) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::info!(ino = ino.0, error = %e, "technical metadata: unreadable header");
            return None;
        }
        Err(e) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(ino = ino.0, error = %e, "technical metadata: extraction task failed");
            return None;
        }
    };
    let document = technical.document();
    let media_id = TechnicalExtractor::<B>::media_id(&inner.workspace_name, ino);
    let datastore = technical::technical_datastore().name;
    let current = inner
        .meta
        .media_documents(&datastore, &media_id, Versions::Latest)
        .await
        .ok()
        .and_then(|mut docs| docs.pop());
    if current.is_some_and(|d| d.body == document && d.target == Some((inner.workspace, ino))) {
        stats.unchanged.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    match inner
        .meta
        .put_media_document(&datastore, &media_id, Some((inner.workspace, ino)), &document)
        .await
    {
        Ok(doc) => {
            stats.written.fetch_add(1, Ordering::Relaxed);
            Some(doc.id)
        }
        Err(e) => {
            // A file removed meanwhile has nothing to attach to: not worth a warning.
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::info!(ino = ino.0, error = %e, "technical metadata: document not stored");
            None
        }
    }
}

/// A committed file's bytes, read block by block through the mount's block path (verified,
/// cached), for the synchronous header parsers (which run on a blocking thread).
struct FileSource<B: BlockIo> {
    inner: Arc<Inner<B>>,
    ino: NodeId,
    size: u64,
    /// Blocks read so far (headers span one or two).
    blocks: Mutex<HashMap<u64, Bytes>>,
}

impl<B: BlockIo> FileSource<B> {
    fn block(&self, idx: u64) -> io::Result<Bytes> {
        if let Some(b) = lock(&self.blocks).get(&idx) {
            return Ok(b.clone());
        }
        let inner = &self.inner;
        let bytes = inner.runtime.block_on(async {
            let map = inner
                .meta
                .block_map(View::Live, self.ino, idx, 1)
                .await
                .map_err(io::Error::other)?;
            match map.first() {
                Some(b) if b.idx == idx => inner
                    .blocks
                    .get_block(b.hash, b.len)
                    .await
                    .map_err(io::Error::other),
                // A hole reads as zeros.
                _ => Ok(Bytes::new()),
            }
        })?;
        lock(&self.blocks).insert(idx, bytes.clone());
        Ok(bytes)
    }
}

impl<B: BlockIo> ByteSource for FileSource<B> {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let end = offset.saturating_add(len as u64).min(self.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < end {
            let idx = at / self.inner.block_size;
            let block = self.block(idx)?;
            let start = (at - idx * self.inner.block_size) as usize;
            let want = (end - at).min(self.inner.block_size - start as u64) as usize;
            let have = block.len().saturating_sub(start).min(want);
            out.extend_from_slice(&block[start.min(block.len())..start.min(block.len()) + have]);
            // Past the block's valid bytes (or a hole): zeros.
            out.resize(out.len() + (want - have), 0);
            at += want as u64;
        }
        Ok(out)
    }
}
