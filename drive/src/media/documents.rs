//! Media documents of any size. A document of at most [`MAX_INLINE_DOCUMENT_BYTES`] of JSON is
//! kept whole in the metadata store; a larger one (a per-frame analysis of an hour of content
//! runs to hundreds of MB) keeps its text in the object store, as blocks of the data path
//! (content-addressed, deduplicated, verified on read), and only its indexed part in the
//! metadata store: its queryable fields, and its timeline entities with the byte span of each
//! item in the text. A timeline query then reads the blocks that hold its hits, not the
//! document.
//!
//! The text's blocks are referenced from `media_blocks` in the same transaction that stores
//! the document, so garbage collection keeps them while the document lives and reclaims them
//! once it is gone (its file purged, its DataStore deleted).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use serde_json::Value;

use super::{
    CompiledDataStore, DataStoreSpec, MAX_DOCUMENT_BYTES, MAX_INLINE_DOCUMENT_BYTES, TimelineQuery, body,
    json_len,
};
use crate::cache::MemoryCache;
use crate::data::{BlockCodec, BlockStore, ChunkStore, DataError};
use crate::error::MetaError;
use crate::meta::{
    DataStoreRecord, MediaDocument, PgMetaStore, StoredBodies, StoredBody, TimelineHit, Versions,
};
use crate::model::{NodeId, WorkspaceId};

/// Bytes of a stored document's text per block.
pub const BODY_BLOCK_SIZE: usize = 4 << 20;
/// Blocks uploaded or fetched at once for one document.
const PARALLEL_BLOCKS: usize = 4;
/// Plaintext of recently read text blocks kept in memory, so a run of timeline queries into
/// one document does not fetch its blocks again.
const BODY_CACHE_BYTES: u64 = 64 << 20;
/// Attempts to store a document whose blocks a GC pass reclaimed while they were uploaded.
const STORE_ATTEMPTS: usize = 3;

/// Documents of every size: the metadata store, and the object store for large texts (none:
/// documents over [`MAX_INLINE_DOCUMENT_BYTES`] are refused). Cheap to clone.
#[derive(Clone)]
pub struct DocumentStore {
    meta: PgMetaStore,
    blocks: Option<BlockStore>,
}

impl std::fmt::Debug for DocumentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocumentStore")
            .field("blocks", &self.blocks)
            .finish_non_exhaustive()
    }
}

fn invalid(e: impl std::fmt::Display) -> MetaError {
    MetaError::InvalidArgument(e.to_string())
}

/// An object-store failure, as the metadata errors callers already map (the text of a
/// document is part of its store).
fn unavailable(what: String, e: DataError) -> MetaError {
    match e {
        DataError::Meta(e) => e,
        e => MetaError::Unavailable {
            message: format!("{what}: {e}"),
            source: Some(Box::new(e)),
        },
    }
}

impl DocumentStore {
    /// Documents in `meta`, large texts in `store` (the deployment's object store, where
    /// workspaces without their own store keep their blocks), or nowhere.
    pub fn new(meta: PgMetaStore, store: Option<Arc<dyn ChunkStore>>) -> DocumentStore {
        // Documents are metadata: plaintext like the rows that index them.
        let blocks = store.map(|store| {
            BlockStore::new(meta.clone(), store, BlockCodec::plaintext(), None)
                .with_memory_cache(Arc::new(MemoryCache::new(BODY_CACHE_BYTES)))
        });
        DocumentStore { meta, blocks }
    }

    pub fn meta(&self) -> &PgMetaStore {
        &self.meta
    }

    /// Blocks of document texts fetched from the object store so far (not from memory).
    pub fn block_gets(&self) -> u64 {
        self.blocks
            .as_ref()
            .map_or(0, |b| b.stats().gets.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Whether documents over [`MAX_INLINE_DOCUMENT_BYTES`] can be written and read here.
    pub fn stores_large_documents(&self) -> bool {
        self.blocks.is_some()
    }

    /// [`PgMetaStore::put_media_datastore_with`], reading the texts of stored documents.
    pub async fn put_datastore(&self, spec: &DataStoreSpec) -> Result<DataStoreRecord, MetaError> {
        self.meta.put_media_datastore_with(spec, Some(self)).await
    }

    /// Writes a document (schema-on-write, as [`PgMetaStore::put_media_document`]), of up to
    /// [`MAX_DOCUMENT_BYTES`] of JSON. A document over [`MAX_INLINE_DOCUMENT_BYTES`] is
    /// refused when this store has no object store, before anything is stored.
    pub async fn put(
        &self,
        datastore: &str,
        media_id: &Value,
        target: Option<(WorkspaceId, NodeId)>,
        document: &Value,
    ) -> Result<MediaDocument, MetaError> {
        let (record, compiled) = self.meta.compiled_media_datastore(datastore).await?;
        compiled.check_media_id(media_id).map_err(invalid)?;
        let len = json_len(document);
        if len > MAX_INLINE_DOCUMENT_BYTES && self.blocks.is_none() {
            return Err(invalid(format!(
                "the document is {len} bytes of JSON; documents over {MAX_INLINE_DOCUMENT_BYTES} \
                 bytes keep their text in the object store, which this process was not given"
            )));
        }
        compiled
            .check_sized_document(document, len, MAX_DOCUMENT_BYTES)
            .map_err(invalid)?;
        match &self.blocks {
            Some(blocks) if len > MAX_INLINE_DOCUMENT_BYTES => {
                self.put_stored(blocks, &record, &compiled, media_id, target, document)
                    .await
            }
            _ => {
                self.meta
                    .insert_media_document(&record, &compiled, media_id, target, document, None)
                    .await
            }
        }
    }

    async fn put_stored(
        &self,
        blocks: &BlockStore,
        record: &DataStoreRecord,
        compiled: &CompiledDataStore,
        media_id: &Value,
        target: Option<(WorkspaceId, NodeId)>,
        document: &Value,
    ) -> Result<MediaDocument, MetaError> {
        let encoded = body::encode(document, compiled);
        let text = Bytes::from(encoded.text);
        let chunks: Vec<Bytes> = (0..text.len())
            .step_by(BODY_BLOCK_SIZE)
            .map(|at| text.slice(at..(at + BODY_BLOCK_SIZE).min(text.len())))
            .collect();
        let hashes: Vec<[u8; 32]> = futures::stream::iter(chunks.iter().cloned())
            .map(|chunk| blocks.put(chunk))
            .buffered(PARALLEL_BLOCKS)
            .try_collect()
            .await
            .map_err(|e| unavailable("storing the document's text".into(), e))?;
        let stored = StoredBody {
            size: text.len() as u64,
            blocks: hashes
                .iter()
                .zip(&chunks)
                .map(|(h, c)| (*h, c.len() as u64))
                .collect(),
            spans: encoded.spans,
        };
        let mut attempt = 1;
        loop {
            match self
                .meta
                .insert_media_document(record, compiled, media_id, target, document, Some(&stored))
                .await
            {
                // A GC pass took blocks this write found already stored (or uploaded too long
                // ago): store them again; the bytes are still here.
                Err(MetaError::BlocksGone(gone)) if attempt < STORE_ATTEMPTS => {
                    attempt += 1;
                    for (hash, chunk) in hashes.iter().zip(&chunks) {
                        if gone.contains(hash) {
                            blocks
                                .put(chunk.clone())
                                .await
                                .map_err(|e| unavailable("storing the document's text".into(), e))?;
                        }
                    }
                }
                other => return other,
            }
        }
    }

    /// Document `id` with its body, read from the object store when it is kept there.
    pub async fn get(&self, id: uuid::Uuid) -> Result<Option<MediaDocument>, MetaError> {
        match self.meta.media_document(id).await? {
            Some(mut doc) => {
                self.fill_body(&mut doc).await?;
                Ok(Some(doc))
            }
            None => Ok(None),
        }
    }

    /// The documents of `media_id` ([`PgMetaStore::media_documents`]) with their bodies.
    pub async fn documents(
        &self,
        datastore: &str,
        media_id: &Value,
        versions: Versions,
    ) -> Result<Vec<MediaDocument>, MetaError> {
        let mut docs = self.meta.media_documents(datastore, media_id, versions).await?;
        for doc in &mut docs {
            self.fill_body(doc).await?;
        }
        Ok(docs)
    }

    /// Reads the body of `doc` when its text is kept in the object store (a document from
    /// the metadata store's own reads has `Null` there).
    pub async fn fill_body(&self, doc: &mut MediaDocument) -> Result<(), MetaError> {
        if doc.stored_size.is_some() && doc.body.is_null() {
            doc.body = self.read_body(doc.id).await?;
        }
        Ok(())
    }

    /// The text of stored document `id`, whole.
    pub async fn read_text(&self, id: uuid::Uuid) -> Result<Bytes, MetaError> {
        let list = self.meta.media_body_blocks(id).await?;
        let parts = self.fetch(id, &list).await?;
        let mut text = BytesMut::with_capacity(list.iter().map(|(_, l)| *l as usize).sum());
        for part in parts {
            text.extend_from_slice(&part);
        }
        Ok(text.freeze())
    }

    async fn read_body(&self, id: uuid::Uuid) -> Result<Value, MetaError> {
        let text = self.read_text(id).await?;
        serde_json::from_slice(&text)
            .map_err(|e| MetaError::Internal(format!("the stored text of document {id} is not JSON: {e}")))
    }

    /// The plaintext of blocks `list` of document `id`, in order.
    async fn fetch(&self, id: uuid::Uuid, list: &[([u8; 32], u64)]) -> Result<Vec<Bytes>, MetaError> {
        let blocks = self.blocks.as_ref().ok_or_else(|| MetaError::Unavailable {
            message: format!(
                "document {id} keeps its text in the object store, which this process was not given"
            ),
            source: None,
        })?;
        futures::stream::iter(list.iter().copied())
            .map(|(hash, _)| blocks.get(hash))
            .buffered(PARALLEL_BLOCKS)
            .try_collect()
            .await
            .map_err(|e| unavailable(format!("reading the text of document {id}"), e))
    }

    /// [`PgMetaStore::query_media_timeline`], with the items of a stored document read from
    /// the blocks that hold them (each block once).
    pub async fn timeline(
        &self,
        id: uuid::Uuid,
        q: &TimelineQuery,
        limit: usize,
    ) -> Result<Vec<TimelineHit>, MetaError> {
        let mut hits = self.meta.query_media_timeline(id, q, limit).await?;
        if hits.iter().all(|h| h.item_span.is_none()) {
            return Ok(hits);
        }
        let list = self.meta.media_body_blocks(id).await?;
        let text = BlockText::new(&list);
        let mut wanted: Vec<usize> = hits
            .iter()
            .filter_map(|h| h.item_span)
            .flat_map(|(offset, len)| text.blocks_of(offset, len))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let fetched: Vec<([u8; 32], u64)> = wanted.iter().map(|&i| list[i]).collect();
        let parts = self.fetch(id, &fetched).await?;
        let read: std::collections::HashMap<usize, Bytes> = wanted.into_iter().zip(parts).collect();
        for hit in &mut hits {
            if let Some((offset, len)) = hit.item_span {
                let bytes = text.slice(&read, offset, len).ok_or_else(|| {
                    MetaError::Internal(format!("document {id}: an item's span lies outside its text"))
                })?;
                hit.item = serde_json::from_slice(&bytes).map_err(|e| {
                    MetaError::Internal(format!("document {id}: the item at {offset} is not JSON: {e}"))
                })?;
            }
        }
        Ok(hits)
    }
}

impl StoredBodies for DocumentStore {
    fn read(&self, id: uuid::Uuid) -> futures::future::BoxFuture<'_, Result<Value, MetaError>> {
        Box::pin(self.read_body(id))
    }
}

/// Where a stored text's bytes lie among its blocks.
struct BlockText {
    /// The offset of each block's first byte, then the text's length.
    starts: Vec<u64>,
}

impl BlockText {
    fn new(list: &[([u8; 32], u64)]) -> BlockText {
        let mut starts = Vec::with_capacity(list.len() + 1);
        let mut at = 0u64;
        starts.push(0);
        for (_, len) in list {
            at += len;
            starts.push(at);
        }
        BlockText { starts }
    }

    fn len(&self) -> u64 {
        self.starts.last().copied().unwrap_or(0)
    }

    /// The block holding byte `at` (at < len).
    fn block_at(&self, at: u64) -> usize {
        self.starts.partition_point(|&s| s <= at) - 1
    }

    /// The blocks holding bytes `offset..offset + len` (none when out of range).
    fn blocks_of(&self, offset: u64, len: u64) -> std::ops::Range<usize> {
        match offset.checked_add(len) {
            Some(end) if len > 0 && end <= self.len() => self.block_at(offset)..self.block_at(end - 1) + 1,
            _ => 0..0,
        }
    }

    /// Bytes `offset..offset + len`, from the blocks in `read`.
    fn slice(
        &self,
        read: &std::collections::HashMap<usize, Bytes>,
        offset: u64,
        len: u64,
    ) -> Option<Vec<u8>> {
        let blocks = self.blocks_of(offset, len);
        if blocks.is_empty() {
            return None;
        }
        let end = offset + len;
        let mut out = Vec::with_capacity(len as usize);
        for i in blocks {
            let block = read.get(&i)?;
            let from = offset.max(self.starts[i]) - self.starts[i];
            let to = end.min(self.starts[i + 1]) - self.starts[i];
            out.extend_from_slice(block.get(from as usize..to as usize)?);
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_read_across_block_boundaries_and_out_of_range_ones_are_none() {
        let text: Vec<u8> = (0..25u8).collect();
        let sizes = [10u64, 10, 5];
        let list: Vec<([u8; 32], u64)> = sizes.iter().map(|&l| ([0; 32], l)).collect();
        let t = BlockText::new(&list);
        let mut at = 0usize;
        let read: std::collections::HashMap<usize, Bytes> = sizes
            .iter()
            .enumerate()
            .map(|(i, &l)| {
                let part = Bytes::copy_from_slice(&text[at..at + l as usize]);
                at += l as usize;
                (i, part)
            })
            .collect();
        for offset in 0..25u64 {
            for len in 1..=(25 - offset) {
                let want = &text[offset as usize..(offset + len) as usize];
                assert_eq!(
                    t.slice(&read, offset, len).as_deref(),
                    Some(want),
                    "{offset}+{len}"
                );
            }
        }
        assert_eq!(t.blocks_of(9, 2), 0..2);
        assert_eq!(t.blocks_of(20, 5), 2..3);
        assert_eq!(t.slice(&read, 20, 6), None);
        assert_eq!(t.slice(&read, 3, 0), None);
        assert_eq!(t.slice(&read, u64::MAX, 2), None);
    }
}
