//! The technical-metadata extractor of a mount: when a file's content is committed, a
//! background task reads its header (never the pixels: at most
//! [`technical::MAX_READ_BYTES`]) and, for OpenEXR, DPX and QuickTime/MP4, files a document in
//! the built-in `studiodrive/technical` DataStore under the media id
//! `{"workspace": <name>, "node": <inode>}`, attached to the file (so it follows renames and
//! goes with the file's purge).
//!
//! An OpenEXR or DPX file also schedules the summary of the sequence its name makes it a frame
//! of (`sh010.1001.exr`, [`FrameName`]) in its folder: a `kind: sequence` document under
//! `{"workspace": <name>, "folder": <inode>, "sequence": "sh010.%04d.exr"}`, attached to the
//! folder, made from the frames' latest documents ([`technical::summarize_frame_documents`]).
//! Summaries are coalesced per folder ([`Coalescer`]): a render writing 1,000 frames writes
//! a handful of them, one run at a time per folder, the last one after its last frame. A
//! frame's sequence is taken from the name it has when the summary runs, not the one its
//! commit carried: render tools write under a temporary name and rename (oiiotool writes
//! `sh010.1001.77ab80e3.temp.exr`, then renames it `sh010.1001.exr`).
//!
//! It never slows the closing process: the observer only queues the file (and a new file not
//! named like a media file is not even read). At most [`MAX_PENDING`] files and
//! [`MAX_PENDING_SUMMARIES`] folders wait; beyond that new ones are skipped and counted. A
//! document equal to the latest one of its media id is not written again (a rewrite with the
//! same header, a summary nothing changed).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::Semaphore;

use super::coalescer::{Coalescer, Request};
use super::technical::{self, ByteSource, Format};
use crate::error::MetaError;
use crate::fs::{BlockIo, CommitObserver};
use crate::meta::{PgMetaStore, Versions};
use crate::model::{Attr, DirEntry, FrameName, Name, NodeId, NodeKind, SequenceKey, View, WorkspaceId};
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
/// Folders waiting for (or making) their sequences' summaries at most; more are skipped (and
/// counted).
pub const MAX_PENDING_SUMMARIES: usize = 1024;
/// Extractions and summaries running at once per mount.
const PARALLEL: usize = 2;
/// How long a folder's summaries wait after they are requested: the frames a render closes
/// (and renames) meanwhile are requests the same run covers.
const SUMMARY_DELAY: Duration = Duration::from_millis(500);
/// Fewer frames are no sequence yet: a lone `plate.0001.exr`, or a still named like a
/// version (`logo_v2.exr`), gets no summary.
pub const MIN_SUMMARY_FRAMES: usize = 2;
/// Entries read per folder listing page while summaries collect their frames.
const LIST_PAGE: usize = 1000;

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
    /// Sequence summaries written.
    pub summaries: AtomicU64,
    /// Frames whose sequence was not summarised because too many folders were waiting.
    pub summaries_skipped: AtomicU64,
    /// Folders that could not be listed, and sequence summaries that could not be made or
    /// stored (the folder or a frame went away meanwhile, the store failed).
    pub summaries_failed: AtomicU64,
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
    /// The technical DataStore's name.
    datastore: String,
    block_size: u64,
    runtime: tokio::runtime::Handle,
    running: Semaphore,
    pending: AtomicU64,
    /// Per folder, the frames filed since its last summary run began.
    summaries: Mutex<Coalescer<NodeId, NodeId>>,
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
    /// version defines it (widening the media ids of a store version 1 made).
    pub async fn start(
        meta: PgMetaStore,
        blocks: Arc<B>,
        workspace: &crate::model::Workspace,
    ) -> Result<TechnicalExtractor<B>, MetaError> {
        let spec = technical::technical_datastore();
        meta.widen_media_id_schema(&spec, &technical::file_media_id_schema())
            .await?;
        meta.put_media_datastore(&spec).await?;
        Ok(TechnicalExtractor {
            inner: Arc::new(Inner {
                meta,
                blocks,
                workspace: workspace.id,
                workspace_name: workspace.name.clone(),
                datastore: spec.name,
                block_size: u64::from(workspace.block_size).max(1),
                runtime: tokio::runtime::Handle::current(),
                running: Semaphore::new(PARALLEL),
                pending: AtomicU64::new(0),
                summaries: Mutex::new(Coalescer::new(MAX_PENDING_SUMMARIES)),
                stats: ExtractStats::default(),
            }),
        })
    }

    pub fn stats(&self) -> &ExtractStats {
        &self.inner.stats
    }

    /// Extracts `ino` now (what a commit queues, without the summary of its sequence); the
    /// document id written, if any.
    pub async fn extract(&self, ino: NodeId, size: u64, name: Option<String>) -> Option<uuid::Uuid> {
        match extract_file(self.inner.clone(), ino, size, name).await {
            Some((_, Filed::Written(id))) => Some(id),
            _ => None,
        }
    }
}

impl<B: BlockIo> CommitObserver for TechnicalExtractor<B> {
    fn committed(&self, attr: &Attr, created: Option<(NodeId, &Name)>) {
        if attr.kind != NodeKind::File || attr.size < technical::DETECT_BYTES {
            return;
        }
        if created.is_some_and(|(_, n)| !may_be_media(n)) {
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
        let created = created.map(|(folder, name)| (folder, name.clone()));
        self.inner.runtime.spawn(async move {
            let permit = inner.running.acquire().await;
            let name = created.as_ref().map(|(_, n)| n.to_string_lossy());
            let filed = extract_file(inner.clone(), ino, size, name).await;
            drop(permit);
            if filed.is_some_and(|(format, _)| format.is_image_frame()) {
                note_frame(&inner, ino, created.map(|(folder, _)| folder)).await;
            }
            inner.pending.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// What filing a document came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filed {
    Written(uuid::Uuid),
    /// Equal to the latest document of its media id, attached to the same node.
    Unchanged,
}

/// Files `body` under `media_id`, attached to `target`, unless the latest document of that
/// media id is equal and attached to it already.
async fn file_document<B: BlockIo>(
    inner: &Inner<B>,
    media_id: &Value,
    target: NodeId,
    body: &Value,
) -> Result<Filed, MetaError> {
    let target = Some((inner.workspace, target));
    // A failed read only costs a duplicate write.
    let current = inner
        .meta
        .media_documents(&inner.datastore, media_id, Versions::Latest)
        .await
        .ok()
        .and_then(|mut docs| docs.pop());
    if current.is_some_and(|d| d.body == *body && d.target == target) {
        return Ok(Filed::Unchanged);
    }
    let doc = inner
        .meta
        .put_media_document(&inner.datastore, media_id, target, body)
        .await?;
    Ok(Filed::Written(doc.id))
}

/// Extracts and files `ino`'s document: its format and what filing came to, or `None` when
/// it has no current document (another format, an unreadable header, a failed write).
async fn extract_file<B: BlockIo>(
    inner: Arc<Inner<B>>,
    ino: NodeId,
    size: u64,
    name: Option<String>,
) -> Option<(Format, Filed)> {
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
    let media_id = technical::file_media_id(&inner.workspace_name, ino);
    match file_document(&inner, &media_id, ino, &document).await {
        Ok(filed) => {
            let counter = match filed {
                Filed::Written(_) => &stats.written,
                Filed::Unchanged => &stats.unchanged,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            Some((technical.format, filed))
        }
        Err(e) => {
            // A file removed meanwhile has nothing to attach to: not worth a warning.
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::info!(ino = ino.0, error = %e, "technical metadata: document not stored");
            None
        }
    }
}

/// Schedules the summaries of the folder of file `ino`, just filed as a frame; `folder` is
/// that folder when the file's commit created it.
async fn note_frame<B: BlockIo>(inner: &Arc<Inner<B>>, ino: NodeId, folder: Option<NodeId>) {
    let folder = match folder {
        Some(folder) => Some(folder),
        // A rewrite carries no folder: the store knows where the file is.
        None => match inner.meta.live_entry_of(ino).await {
            Ok(entry) => entry.map(|(folder, _)| folder),
            Err(e) => {
                tracing::debug!(ino = ino.0, error = %e, "technical metadata: frame's folder unknown");
                None
            }
        },
    };
    let Some(folder) = folder else { return };
    let request = lock(&inner.summaries).request(folder, ino);
    match request {
        Request::Start => {
            inner
                .runtime
                .spawn(summarize_while_requested(inner.clone(), folder));
        }
        Request::Coalesced => {}
        Request::Full => {
            inner.stats.summaries_skipped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The task of one folder's summaries: one run, and another while frames were filed during
/// the last one.
async fn summarize_while_requested<B: BlockIo>(inner: Arc<Inner<B>>, folder: NodeId) {
    loop {
        tokio::time::sleep(SUMMARY_DELAY).await;
        let permit = inner.running.acquire().await;
        // Frames filed from here on may be missed by this run: they ask for another.
        let noted = lock(&inner.summaries).begin(&folder);
        if let Err(e) = summarize_folder(&inner, folder, &noted).await {
            inner.stats.summaries_failed.fetch_add(1, Ordering::Relaxed);
            tracing::info!(folder = folder.0, error = %e, "technical metadata: folder not listed for summaries");
        }
        drop(permit);
        let again = lock(&inner.summaries).finish(&folder);
        if !again {
            return;
        }
    }
}

/// Files the summary of each sequence of `folder` that one of `noted` is a frame of now.
async fn summarize_folder<B: BlockIo>(
    inner: &Inner<B>,
    folder: NodeId,
    noted: &[NodeId],
) -> Result<(), MetaError> {
    let listing = list_folder(inner, folder).await?;
    for (key, frames) in sequences_of(&listing, noted) {
        if frames.len() < MIN_SUMMARY_FRAMES {
            continue;
        }
        match file_summary(inner, folder, &key, frames).await {
            Ok(Filed::Written(_)) => {
                inner.stats.summaries.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Filed::Unchanged) => {}
            Err(e) => {
                inner.stats.summaries_failed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(folder = folder.0, sequence = %key, error = %e,
                    "technical metadata: sequence summary not stored");
            }
        }
    }
    Ok(())
}

/// Every live entry of `folder`, in name order.
async fn list_folder<B: BlockIo>(inner: &Inner<B>, folder: NodeId) -> Result<Vec<DirEntry>, MetaError> {
    let mut listing: Vec<DirEntry> = Vec::new();
    loop {
        let after = listing.last().map(|e| e.name.clone());
        let page = inner
            .meta
            .readdir(View::Live, folder, after.as_ref(), LIST_PAGE)
            .await?;
        let full = page.len() == LIST_PAGE;
        listing.extend(page);
        if !full {
            return Ok(listing);
        }
    }
}

/// The frames (number, node) of each sequence in `listing` that one of `noted` is a frame of,
/// by sequence, in name order. Only files count; frame numbers are unsigned digit runs (a '-'
/// before them belongs to the prefix).
fn sequences_of(listing: &[DirEntry], noted: &[NodeId]) -> BTreeMap<SequenceKey, Vec<(u64, NodeId)>> {
    let noted: HashSet<NodeId> = noted.iter().copied().collect();
    let frames: Vec<(FrameName, NodeId)> = listing
        .iter()
        .filter(|e| e.kind == NodeKind::File)
        .filter_map(|e| Some((FrameName::parse(e.name.as_bytes())?, e.ino)))
        .collect();
    let mut sequences: BTreeMap<SequenceKey, Vec<(u64, NodeId)>> = frames
        .iter()
        .filter(|(_, ino)| noted.contains(ino))
        .map(|(f, _)| (f.key.clone(), Vec::new()))
        .collect();
    for (f, ino) in frames {
        if let (Some(list), Ok(number)) = (sequences.get_mut(&f.key), u64::try_from(f.frame)) {
            list.push((number, ino));
        }
    }
    sequences
}

/// Summarises sequence `key` of `folder` from the latest documents of its `frames`, and files
/// the summary (see [`file_document`]).
async fn file_summary<B: BlockIo>(
    inner: &Inner<B>,
    folder: NodeId,
    key: &SequenceKey,
    frames: Vec<(u64, NodeId)>,
) -> Result<Filed, MetaError> {
    let media_ids: Vec<Value> = frames
        .iter()
        .map(|(_, ino)| technical::file_media_id(&inner.workspace_name, *ino))
        .collect();
    let mut latest = inner
        .meta
        .latest_media_documents(&inner.datastore, &media_ids)
        .await?;
    let documents: Vec<(u64, Option<Value>)> = frames
        .iter()
        .zip(&media_ids)
        .map(|((number, _), id)| {
            let body = latest
                .remove(&crate::media::media_id_key(id))
                .map(|d| summarized_part(d.body));
            (*number, body)
        })
        .collect();
    let summary = technical::summarize_frame_documents(&documents);
    let media_id = technical::sequence_media_id(&inner.workspace_name, folder, key);
    file_document(inner, &media_id, folder, &summary).await
}

/// A frame document cut to the fields a summary reads: a summary of many frames holds them
/// all at once, and a frame's document may list hundreds of channels.
fn summarized_part(mut document: Value) -> Value {
    if let Some(fields) = document.as_object_mut() {
        fields.retain(|field, _| technical::SUMMARIZED_FIELDS.contains(&field.as_str()));
    }
    document
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
        let (inner, ino) = (self.inner.clone(), self.ino);
        // Run by the runtime, which drops it when it stops (this wait then ends with an
        // error), not polled on this thread: there its timers would be polled after their
        // driver stopped, which panics.
        let fetch = self.inner.runtime.spawn(async move {
            let map = inner
                .meta
                .block_map(View::Live, ino, idx, 1)
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
        });
        let bytes = self.inner.runtime.block_on(fetch).map_err(io::Error::other)??;
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn entry(name: &str, ino: u64, kind: NodeKind) -> DirEntry {
        DirEntry {
            name: Name::parse(name).unwrap(),
            ino: NodeId(ino),
            kind,
        }
    }

    fn key(name: &str) -> SequenceKey {
        FrameName::parse(name.as_bytes()).unwrap().key
    }

    #[test]
    fn the_sequences_summarised_are_those_of_the_noted_frames_names_now() {
        let listing = [
            entry("notes.txt", 1, NodeKind::File),
            entry("sh010.0999.exr", 6, NodeKind::File),
            entry("sh010.1001.exr", 2, NodeKind::File),
            entry("sh010.1001.exr.bak", 5, NodeKind::File),
            entry("sh010.1002.exr", 3, NodeKind::File),
            entry("sh010.1003.exr", 7, NodeKind::Directory),
            entry("sh010.1004.exr", 4, NodeKind::File),
            entry("sh020.0001.dpx", 8, NodeKind::File),
            entry("sh020.0002.dpx", 9, NodeKind::File),
        ];
        // Node 3 was committed as `sh010.1002.1a2b.temp.exr`: its name now is what counts.
        let picked = sequences_of(&listing, &[NodeId(3), NodeId(3), NodeId(1), NodeId(42)]);
        assert_eq!(
            picked,
            BTreeMap::from([(
                key("sh010.1001.exr"),
                vec![
                    (999, NodeId(6)),
                    (1001, NodeId(2)),
                    (1002, NodeId(3)),
                    (1004, NodeId(4))
                ]
            )]),
            "a folder is a frame of none; neither is a file that is gone"
        );
        let both = sequences_of(&listing, &[NodeId(9), NodeId(2)]);
        assert_eq!(
            both.keys().map(ToString::to_string).collect::<Vec<_>>(),
            ["sh010.%04d.exr", "sh020.%04d.dpx"]
        );
        assert_eq!(both[&key("sh020.0001.dpx")], [(1, NodeId(8)), (2, NodeId(9))]);
    }

    #[test]
    fn a_summary_reads_only_the_summarized_fields_of_a_frame() {
        let doc = json!({"kind": "file", "format": "openexr", "width": 8, "channelNames": ["R"],
                         "exr": {"tiled": false}});
        assert_eq!(summarized_part(doc), json!({"format": "openexr", "width": 8}));
    }
}
