//! Media DataStores and Documents in the metadata store (the rules are [`crate::media`]).
//!
//! A document is written once (a new id each write, so a retried write never conflicts) with
//! its index rows (`media_fields`, one per queryable field present) and, when it is the newest
//! of its media id, the `media_latest` pointer, all in one transaction: a reader that saw the
//! write's success reads it (read-after-write). Queries run over the index only
//! ([`crate::media::Filter::to_sql`]).
//!
//! A document over [`crate::media::MAX_INLINE_DOCUMENT_BYTES`] keeps its text in the object
//! store ([`crate::media::documents::DocumentStore`] writes and reads it): here it has its
//! index rows, its block list (`media_blocks`, which keeps the blocks live for GC) and, per
//! timeline entity, the span of its item in the text.

use std::time::SystemTime;

use serde_json::Value;
use tokio_postgres::types::ToSql;

use crate::error::MetaError;
use crate::media::{
    CompiledDataStore, DataStoreSpec, Filter, IndexValue, SqlParam, TimelineEntity, TimelineQuery,
    media_id_key,
};
use crate::meta::content::claim_blocks;
use crate::meta::rows::{
    execute, first_failure, from_system_time, live_inode, query, query_opt, settle, settle3, ws_ctx,
};
use crate::meta::{PgMetaStore, in_txn};
use crate::model::{NodeId, Timestamp, WorkspaceId};

/// Documents a query or a listing returns at most.
pub const MAX_QUERY_RESULTS: usize = 10_000;
/// Documents checked per batch when a schema changes.
const RECHECK_BATCH: i64 = 1000;

/// Compiled DataStores by id, each with the `updated_at` of the record it was compiled from.
pub(crate) type CompiledCache = std::sync::Arc<
    std::sync::Mutex<std::collections::HashMap<uuid::Uuid, (Timestamp, std::sync::Arc<CompiledDataStore>)>>,
>;

/// A DataStore as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct DataStoreRecord {
    pub id: uuid::Uuid,
    pub spec: DataStoreSpec,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A document as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaDocument {
    pub id: uuid::Uuid,
    pub datastore: String,
    pub media_id: Value,
    /// The node it is attached to, if any.
    pub target: Option<(WorkspaceId, NodeId)>,
    /// The document; `Null` when its text is kept in the object store (`stored_size`).
    pub body: Value,
    /// The length of the document's text when it is kept in the object store.
    pub stored_size: Option<u64>,
    pub created_at: Timestamp,
}

/// The text of a document kept in the object store: its blocks (hash, length) in order, and
/// where each timeline item lies in it ([`crate::media::body::EncodedBody::spans`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredBody {
    pub size: u64,
    pub blocks: Vec<([u8; 32], u64)>,
    pub spans: Vec<Vec<(u64, u64)>>,
}

/// Reads the text of documents kept in the object store, for the checks of a schema change
/// (the metadata store holds only their indexed part).
pub trait StoredBodies: Send + Sync {
    fn read(&self, id: uuid::Uuid) -> futures::future::BoxFuture<'_, Result<Value, MetaError>>;
}

/// A document a query found (the body is read with [`PgMetaStore::media_document`]).
#[derive(Debug, Clone, PartialEq)]
pub struct MediaHit {
    pub id: uuid::Uuid,
    pub media_id: Value,
    pub target: Option<(WorkspaceId, NodeId)>,
    pub created_at: Timestamp,
}

/// Which documents of a media id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    /// The newest only.
    Latest,
    /// Every one, oldest first.
    All,
}

const DATASTORE_COLUMNS: &str = "id, name, analysis_type, version, schema, media_id_schema, queryable, created_at, updated_at, timeline, access";

fn datastore_from_row(r: &tokio_postgres::Row) -> DataStoreRecord {
    DataStoreRecord {
        id: r.get(0),
        spec: DataStoreSpec {
            name: r.get(1),
            analysis_type: r.get(2),
            version: u32::try_from(r.get::<_, i64>(3)).unwrap_or(0),
            schema: r.get(4),
            media_id_schema: r.get(5),
            queryable: r.get(6),
            timeline: serde_json::from_value(r.get(9)).unwrap_or_default(),
            // Unreadable access grants nothing.
            access: serde_json::from_value(r.get(10)).unwrap_or_default(),
        },
        created_at: from_system_time(r.get::<_, SystemTime>(7)),
        updated_at: from_system_time(r.get::<_, SystemTime>(8)),
    }
}

fn target_from(ws: Option<uuid::Uuid>, ino: Option<i64>) -> Option<(WorkspaceId, NodeId)> {
    Some((WorkspaceId(ws?), NodeId(u64::try_from(ino?).ok()?)))
}

fn invalid(e: impl std::fmt::Display) -> MetaError {
    MetaError::InvalidArgument(e.to_string())
}

/// The body of a document row (`id`, `body`): the row's, or read from the object store.
async fn body_of(
    id: uuid::Uuid,
    body: Option<Value>,
    bodies: Option<&dyn StoredBodies>,
) -> Result<Value, MetaError> {
    match (body, bodies) {
        (Some(body), _) => Ok(body),
        (None, Some(bodies)) => bodies.read(id).await,
        (None, None) => Err(MetaError::Unavailable {
            message: format!(
                "document {id} is kept in the object store, which this process does not read; \
                 change the DataStore with `studiodrive-csi meta datastore put`, which reads it"
            ),
            source: None,
        }),
    }
}

/// The first stored document of DataStore `id` that `compiled` refuses: its id and why.
async fn first_invalid_document<C: deadpool_postgres::GenericClient>(
    c: &C,
    id: uuid::Uuid,
    compiled: &CompiledDataStore,
    bodies: Option<&dyn StoredBodies>,
) -> Result<Option<(uuid::Uuid, String)>, MetaError> {
    let mut after = uuid::Uuid::nil();
    loop {
        let rows = query(
            c,
            "SELECT id, body FROM media_documents WHERE datastore_id = $1 AND id > $2 ORDER BY id LIMIT $3",
            &[&id, &after, &RECHECK_BATCH],
        )
        .await?;
        for row in &rows {
            let body = body_of(row.get(0), row.get(1), bodies).await?;
            if let Err(e) = compiled.check_document_within(&body, crate::media::MAX_DOCUMENT_BYTES) {
                return Ok(Some((row.get(0), e.to_string())));
            }
        }
        match rows.last() {
            Some(last) if rows.len() as i64 == RECHECK_BATCH => after = last.get(0),
            _ => return Ok(None),
        }
    }
}

impl PgMetaStore {
    /// Creates DataStore `spec.name`, or changes it. The media id schema cannot change, and a
    /// new document schema or queryable list is taken only when every stored document still
    /// validates: the first one that does not is named in the error, and nothing changes.
    /// Changed queryable fields are re-indexed.
    ///
    /// A change that must read documents kept in the object store fails here with
    /// `Unavailable`: [`PgMetaStore::put_media_datastore_with`] reads them.
    pub async fn put_media_datastore(&self, spec: &DataStoreSpec) -> Result<DataStoreRecord, MetaError> {
        self.put_media_datastore_with(spec, None).await
    }

    /// [`PgMetaStore::put_media_datastore`], reading documents kept in the object store
    /// through `bodies`.
    pub async fn put_media_datastore_with(
        &self,
        spec: &DataStoreSpec,
        bodies: Option<&dyn StoredBodies>,
    ) -> Result<DataStoreRecord, MetaError> {
        let compiled = CompiledDataStore::compile(spec.clone()).map_err(invalid)?;
        let existing = self.media_datastore(&spec.name).await?;
        if let Some(old) = &existing {
            if old.spec.media_id_schema != spec.media_id_schema {
                return Err(invalid(format!(
                    "DataStore {}: the media id schema cannot change",
                    spec.name
                )));
            }
            if old.spec == *spec {
                return Ok(old.clone());
            }
        }
        // The stored documents are checked inside the transaction that changes the schema:
        // a document written meanwhile (which reads the schema FOR SHARE) then either waits
        // for the change or makes SERIALIZABLE abort one of the two, never stays stored under
        // a schema it fails.
        let recheck = existing
            .as_ref()
            .filter(|old| old.spec.schema != spec.schema || old.spec.timeline != spec.timeline)
            .map(|old| old.id);
        let id = existing.as_ref().map_or_else(uuid::Uuid::new_v4, |d| d.id);
        let version = i64::from(spec.version);
        let reindex = existing
            .as_ref()
            .is_some_and(|d| d.spec.queryable != spec.queryable || d.spec.timeline != spec.timeline);
        let timeline =
            serde_json::to_value(&spec.timeline).map_err(|e| MetaError::Internal(e.to_string()))?;
        let access = serde_json::to_value(&spec.access).map_err(|e| MetaError::Internal(e.to_string()))?;
        let record = in_txn!(self, |tx| {
            async {
                if let Some(id) = recheck {
                    // Taken first: documents written from here on wait for this change.
                    query_opt(tx, "SELECT 1 FROM media_datastores WHERE id = $1 FOR UPDATE", &[&id]).await?;
                    if let Some((doc, why)) = first_invalid_document(tx, id, &compiled, bodies).await? {
                        return Err(invalid(format!(
                            "DataStore {}: stored document {doc} does not pass the new schema: {why}",
                            spec.name
                        )));
                    }
                }
                let row = query_opt(
                    tx,
                    &format!(
                        "INSERT INTO media_datastores (id, name, analysis_type, version, schema, media_id_schema, queryable, timeline, access) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                         ON CONFLICT (name) DO UPDATE SET analysis_type = excluded.analysis_type, \
                             version = excluded.version, schema = excluded.schema, \
                             queryable = excluded.queryable, timeline = excluded.timeline, \
                             access = excluded.access, updated_at = now() \
                         WHERE media_datastores.media_id_schema = excluded.media_id_schema \
                         RETURNING {DATASTORE_COLUMNS}"
                    ),
                    &[
                        &id,
                        &spec.name,
                        &spec.analysis_type,
                        &version,
                        &spec.schema,
                        &spec.media_id_schema,
                        &spec.queryable,
                        &timeline,
                        &access,
                    ],
                )
                .await?
                .ok_or_else(|| invalid(format!("DataStore {}: the media id schema cannot change", spec.name)))?;
                let record = datastore_from_row(&row);
                if reindex {
                    execute(tx, "DELETE FROM media_fields WHERE datastore_id = $1", &[&record.id]).await?;
                    execute(
                        tx,
                        "DELETE FROM media_timeline WHERE doc_id IN (SELECT id FROM media_documents WHERE datastore_id = $1)",
                        &[&record.id],
                    )
                    .await?;
                    let docs = query(
                        tx,
                        "SELECT id, body FROM media_documents WHERE datastore_id = $1",
                        &[&record.id],
                    )
                    .await?;
                    for doc in docs {
                        let id: uuid::Uuid = doc.get(0);
                        let row_body: Option<Value> = doc.get(1);
                        let stored = row_body.is_none();
                        let body = body_of(id, row_body, bodies).await?;
                        // A stored text's spans are found again by encoding it as it was written.
                        let spans = stored.then(|| crate::media::body::encode(&body, &compiled).spans);
                        index_document(tx, &compiled, record.id, id, &body, spans.as_deref()).await?;
                    }
                }
                Ok(record)
            }
            .await
        })?;
        Ok(record)
    }

    /// DataStore `name`, if it exists.
    pub async fn media_datastore(&self, name: &str) -> Result<Option<DataStoreRecord>, MetaError> {
        let client = self.client().await?;
        Ok(query_opt(
            &client,
            &format!("SELECT {DATASTORE_COLUMNS} FROM media_datastores WHERE name = $1"),
            &[&name],
        )
        .await?
        .as_ref()
        .map(datastore_from_row))
    }

    /// Every DataStore, by name.
    pub async fn media_datastores(&self) -> Result<Vec<DataStoreRecord>, MetaError> {
        let client = self.client().await?;
        Ok(query(
            &client,
            &format!("SELECT {DATASTORE_COLUMNS} FROM media_datastores ORDER BY name"),
            &[],
        )
        .await?
        .iter()
        .map(datastore_from_row)
        .collect())
    }

    /// Deletes DataStore `name` and its documents; false when there was none.
    pub async fn delete_media_datastore(&self, name: &str) -> Result<bool, MetaError> {
        in_txn!(self, |tx| {
            async {
                let Some(row) = query_opt(
                    tx,
                    "DELETE FROM media_datastores WHERE name = $1 RETURNING id",
                    &[&name],
                )
                .await?
                else {
                    return Ok(false);
                };
                let id: uuid::Uuid = row.get(0);
                for table in ["media_timeline", "media_blocks"] {
                    execute(
                        tx,
                        &format!(
                            "DELETE FROM {table} WHERE doc_id IN (SELECT id FROM media_documents WHERE datastore_id = $1)"
                        ),
                        &[&id],
                    )
                    .await?;
                }
                for table in ["media_fields", "media_latest", "media_documents"] {
                    execute(
                        tx,
                        &format!("DELETE FROM {table} WHERE datastore_id = $1"),
                        &[&id],
                    )
                    .await?;
                }
                Ok(true)
            }
            .await
        })
    }

    /// Writes a document of DataStore `datastore` for `media_id`, attached to `target` (a live
    /// node of a workspace) when given. Schema-on-write: an invalid document or media id is
    /// refused with the JSON path of the error, and nothing is stored.
    ///
    /// The document must be at most [`crate::media::MAX_INLINE_DOCUMENT_BYTES`] of JSON: a
    /// larger one is written with [`crate::media::documents::DocumentStore::put`].
    pub async fn put_media_document(
        &self,
        datastore: &str,
        media_id: &Value,
        target: Option<(WorkspaceId, NodeId)>,
        body: &Value,
    ) -> Result<MediaDocument, MetaError> {
        let (record, compiled) = self.compiled_media_datastore(datastore).await?;
        compiled.check_media_id(media_id).map_err(invalid)?;
        compiled.check_document(body).map_err(invalid)?;
        self.insert_media_document(&record, &compiled, media_id, target, body, None)
            .await
    }

    /// DataStore `name` and its compiled rules.
    pub(crate) async fn compiled_media_datastore(
        &self,
        name: &str,
    ) -> Result<(DataStoreRecord, std::sync::Arc<CompiledDataStore>), MetaError> {
        let record = self
            .media_datastore(name)
            .await?
            .ok_or_else(|| MetaError::NotFound(format!("DataStore {name}")))?;
        let cached = crate::sync::lock(&self.media_compiled)
            .get(&record.id)
            .filter(|(at, _)| *at == record.updated_at)
            .map(|(_, compiled)| compiled.clone());
        let compiled = match cached {
            Some(compiled) => compiled,
            None => {
                let compiled =
                    std::sync::Arc::new(CompiledDataStore::compile(record.spec.clone()).map_err(invalid)?);
                crate::sync::lock(&self.media_compiled)
                    .insert(record.id, (record.updated_at, compiled.clone()));
                compiled
            }
        };
        Ok((record, compiled))
    }

    /// Stores a document the caller has checked against `compiled` (its media id and body),
    /// with its text in the row, or in the object store as `stored` says. Blocks of `stored`
    /// that a GC pass reclaimed meanwhile fail the write with `BlocksGone` (upload them again
    /// and retry).
    pub(crate) async fn insert_media_document(
        &self,
        record: &DataStoreRecord,
        compiled: &CompiledDataStore,
        media_id: &Value,
        target: Option<(WorkspaceId, NodeId)>,
        body: &Value,
        stored: Option<&StoredBody>,
    ) -> Result<MediaDocument, MetaError> {
        let datastore = record.spec.name.as_str();
        let key = media_id_key(media_id);
        let id = uuid::Uuid::new_v4();
        let (ws, ino) = target.map_or((None, None), |(w, n)| (Some(w.0), Some(n.0 as i64)));
        let hashes: Vec<&[u8]> =
            stored.map_or_else(Vec::new, |s| s.blocks.iter().map(|(h, _)| h.as_slice()).collect());
        let (row_body, body_size) = match stored {
            Some(s) => (None, Some(s.size as i64)),
            None => (Some(body), None),
        };
        let block_indexes: Vec<i64> = (0..hashes.len() as i64).collect();
        let block_lens: Vec<i64> =
            stored.map_or_else(Vec::new, |s| s.blocks.iter().map(|(_, l)| *l as i64).collect());
        let created = in_txn!(self, |tx| {
            async {
                // The reads go out together: the target is live, the blocks are ours, and the
                // DataStore is still the one the document was checked against (taken FOR
                // SHARE: a change of it waits for this write or aborts one of the two).
                let epoch = async {
                    match target {
                        Some((w, n)) => {
                            let ctx = ws_ctx(tx, w).await?;
                            live_inode(tx, &ctx, n).await?;
                            Ok(Some(ctx.epoch))
                        }
                        None => Ok(None),
                    }
                };
                let current = async {
                    let row = query_opt(
                        tx,
                        "SELECT updated_at FROM media_datastores WHERE id = $1 FOR SHARE",
                        &[&record.id],
                    )
                    .await?
                    .ok_or_else(|| MetaError::NotFound(format!("DataStore {datastore}")))?;
                    if from_system_time(row.get::<_, SystemTime>(0)) != record.updated_at {
                        return Err(MetaError::Conflict(format!(
                            "DataStore {datastore} changed during the write; write again"
                        )));
                    }
                    Ok(())
                };
                let (epoch, (), ()) = {
                    let (epoch, claimed, current) = tokio::join!(epoch, claim_blocks(tx, &hashes), current);
                    settle3(epoch, claimed, current)?
                };
                // Then the writes, together. `now()` is the transaction's time: the document's
                // `created_at` and its latest pointer's are one value.
                let document_params: [&(dyn ToSql + Sync); 9] =
                    [&id, &record.id, &key, media_id, &ws, &ino, &epoch, &row_body, &body_size];
                let document = query_opt(
                    tx,
                    "INSERT INTO media_documents (id, datastore_id, media_key, media_id, workspace_id, ino, epoch, body, body_size) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING created_at",
                    &document_params,
                );
                let blocks = async {
                    if hashes.is_empty() {
                        return Ok(());
                    }
                    execute(
                        tx,
                        "INSERT INTO media_blocks (doc_id, idx, hash, len) \
                         SELECT $1, * FROM unnest($2::INT8[], $3::BYTEA[], $4::INT8[])",
                        &[&id, &block_indexes, &hashes, &block_lens],
                    )
                    .await
                    .map(drop)
                };
                let indexed = index_document(tx, compiled, record.id, id, body, stored.map(|s| s.spans.as_slice()));
                let latest_params: [&(dyn ToSql + Sync); 3] = [&record.id, &key, &id];
                let latest = execute(
                    tx,
                    "INSERT INTO media_latest (datastore_id, media_key, doc_id, created_at) VALUES ($1, $2, $3, now()) \
                     ON CONFLICT (datastore_id, media_key) DO UPDATE SET doc_id = excluded.doc_id, \
                         created_at = excluded.created_at \
                     WHERE (media_latest.created_at, media_latest.doc_id) < (excluded.created_at, excluded.doc_id)",
                    &latest_params,
                );
                let (document, blocks, indexed, latest) = tokio::join!(document, blocks, indexed, latest);
                let (document, ()) = settle(document, first_failure([blocks, indexed, latest.map(drop)]))?;
                let row = document.ok_or_else(|| MetaError::Internal("insert returned no row".into()))?;
                Ok(row.get::<_, SystemTime>(0))
            }
            .await
        })?;
        Ok(MediaDocument {
            id,
            datastore: datastore.to_string(),
            media_id: media_id.clone(),
            target,
            body: if stored.is_some() {
                Value::Null
            } else {
                body.clone()
            },
            stored_size: stored.map(|s| s.size),
            created_at: from_system_time(created),
        })
    }

    /// Loads many unattached documents of DataStore `datastore` in one transaction by COPY,
    /// for imports and benchmarks, where a transaction per document would measure round trips.
    /// Each media id and document is checked as [`PgMetaStore::put_media_document`] checks it
    /// (the batch is refused at the first invalid one, with its position and JSON path) and
    /// indexed the same way (field rows, timeline entities, the latest pointer). Documents are
    /// not attached to a node; their `created_at` is the transaction's time plus one
    /// microsecond per position, so within a batch a later document of a media id is newer.
    /// Returns the documents' ids, in order.
    pub async fn bulk_load_media_documents(
        &self,
        datastore: &str,
        docs: &[(Value, Value)],
    ) -> Result<Vec<uuid::Uuid>, MetaError> {
        use tokio_postgres::binary_copy::BinaryCopyInWriter;
        use tokio_postgres::types::Type;

        let (record, compiled) = self.compiled_media_datastore(datastore).await?;
        let mut rows = Vec::with_capacity(docs.len());
        for (i, (media_id, body)) in docs.iter().enumerate() {
            let at = |e: crate::media::Invalid| invalid(format!("document {i} of the batch: {e}"));
            compiled.check_media_id(media_id).map_err(at)?;
            compiled.check_document(body).map_err(at)?;
            let entities = compiled.timeline(body).map_err(at)?;
            rows.push((
                uuid::Uuid::new_v4(),
                media_id_key(media_id),
                compiled.index(body),
                entities,
            ));
        }
        // The last document of each media id is the batch's latest of it.
        let mut latest: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for (i, row) in rows.iter().enumerate() {
            latest.insert(row.1.as_str(), i);
        }
        in_txn!(self, |tx| {
            async {
                let current = query_opt(
                    tx,
                    "SELECT schema, now() FROM media_datastores WHERE id = $1 FOR SHARE",
                    &[&record.id],
                )
                .await?
                .ok_or_else(|| MetaError::NotFound(format!("DataStore {datastore}")))?;
                if current.get::<_, Value>(0) != record.spec.schema {
                    return Err(MetaError::Conflict(format!(
                        "DataStore {datastore} changed its schema during the load; load again"
                    )));
                }
                let base: SystemTime = current.get(1);
                let created = |i: usize| base + std::time::Duration::from_micros(i as u64);
                crate::meta::timed(async {
                    let sink = tx
                        .copy_in(
                            "COPY media_documents (id, datastore_id, media_key, media_id, body, created_at) \
                             FROM STDIN BINARY",
                        )
                        .await?;
                    let types = [
                        Type::UUID,
                        Type::UUID,
                        Type::TEXT,
                        Type::JSONB,
                        Type::JSONB,
                        Type::TIMESTAMPTZ,
                    ];
                    let writer = BinaryCopyInWriter::new(sink, &types);
                    futures::pin_mut!(writer);
                    for (i, ((media_id, body), (id, key, ..))) in docs.iter().zip(&rows).enumerate() {
                        writer
                            .as_mut()
                            .write(&[id, &record.id, key, media_id, body, &created(i)])
                            .await?;
                    }
                    writer.finish().await
                })
                .await?;
                crate::meta::timed(async {
                    let sink = tx
                        .copy_in(
                            "COPY media_fields (datastore_id, field, doc_id, kind, bool_value, num, str) \
                             FROM STDIN BINARY",
                        )
                        .await?;
                    let types = [
                        Type::UUID,
                        Type::TEXT,
                        Type::UUID,
                        Type::TEXT,
                        Type::BOOL,
                        Type::FLOAT8,
                        Type::BYTEA,
                    ];
                    let writer = BinaryCopyInWriter::new(sink, &types);
                    futures::pin_mut!(writer);
                    for (id, _, fields, _) in &rows {
                        for (field, value) in fields {
                            let (b, n, s) = index_columns(value);
                            writer
                                .as_mut()
                                .write(&[&record.id, field, id, &value.kind(), &b, &n, &s])
                                .await?;
                        }
                    }
                    writer.finish().await
                })
                .await?;
                if rows.iter().any(|r| !r.3.is_empty()) {
                    crate::meta::timed(async {
                        let sink = tx
                            .copy_in(
                                "COPY media_timeline (doc_id, collection, idx, t_start, t_end, x0, y0, x1, y1) \
                                 FROM STDIN BINARY",
                            )
                            .await?;
                        let types = [
                            Type::UUID,
                            Type::INT4,
                            Type::INT4,
                            Type::FLOAT8,
                            Type::FLOAT8,
                            Type::FLOAT8,
                            Type::FLOAT8,
                            Type::FLOAT8,
                            Type::FLOAT8,
                        ];
                        let writer = BinaryCopyInWriter::new(sink, &types);
                        futures::pin_mut!(writer);
                        for (id, _, _, entities) in &rows {
                            for e in entities {
                                let collection = e.collection as i32;
                                let idx = i32::try_from(e.index).unwrap_or(i32::MAX);
                                let r = |i: usize| e.region.map(|r| r[i]);
                                let (x0, y0, x1, y1) = (r(0), r(1), r(2), r(3));
                                writer
                                    .as_mut()
                                    .write(&[id, &collection, &idx, &e.start, &e.end, &x0, &y0, &x1, &y1])
                                    .await?;
                            }
                        }
                        writer.finish().await
                    })
                    .await?;
                }
                let mut keys = Vec::with_capacity(latest.len());
                let mut ids = Vec::with_capacity(latest.len());
                let mut times = Vec::with_capacity(latest.len());
                for (key, &i) in &latest {
                    keys.push(*key);
                    ids.push(rows[i].0);
                    times.push(created(i));
                }
                execute(
                    tx,
                    "INSERT INTO media_latest (datastore_id, media_key, doc_id, created_at) \
                     SELECT $1, * FROM unnest($2::TEXT[], $3::UUID[], $4::TIMESTAMPTZ[]) \
                     ON CONFLICT (datastore_id, media_key) DO UPDATE SET doc_id = excluded.doc_id, \
                         created_at = excluded.created_at \
                     WHERE (media_latest.created_at, media_latest.doc_id) < (excluded.created_at, excluded.doc_id)",
                    &[&record.id, &keys, &ids, &times],
                )
                .await?;
                Ok(())
            }
            .await
        })?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Document `id`, if it exists.
    pub async fn media_document(&self, id: uuid::Uuid) -> Result<Option<MediaDocument>, MetaError> {
        let client = self.client().await?;
        Ok(query_opt(
            &client,
            "SELECT d.id, s.name, d.media_id, d.workspace_id, d.ino, d.body, d.created_at, d.body_size \
             FROM media_documents d JOIN media_datastores s ON s.id = d.datastore_id WHERE d.id = $1",
            &[&id],
        )
        .await?
        .map(|r| document_from_row(&r)))
    }

    /// The documents of `media_id` in DataStore `datastore`: the newest, or all oldest first.
    pub async fn media_documents(
        &self,
        datastore: &str,
        media_id: &Value,
        versions: Versions,
    ) -> Result<Vec<MediaDocument>, MetaError> {
        let client = self.client().await?;
        let key = media_id_key(media_id);
        let latest = match versions {
            Versions::Latest => {
                "AND d.id IN (SELECT doc_id FROM media_latest l WHERE l.datastore_id = s.id AND l.media_key = $2)"
            }
            Versions::All => "",
        };
        let limit = MAX_QUERY_RESULTS as i64;
        Ok(query(
            &client,
            &format!(
                "SELECT d.id, s.name, d.media_id, d.workspace_id, d.ino, d.body, d.created_at, d.body_size \
                 FROM media_documents d JOIN media_datastores s ON s.id = d.datastore_id \
                 WHERE s.name = $1 AND d.media_key = $2 {latest} ORDER BY d.created_at, d.id LIMIT $3"
            ),
            &[&datastore, &key, &limit],
        )
        .await?
        .iter()
        .map(document_from_row)
        .collect())
    }

    /// The newest document of each of `media_ids` in DataStore `datastore` that has one, by
    /// media id key ([`media_id_key`]); one query per 1,000 ids.
    pub async fn latest_media_documents(
        &self,
        datastore: &str,
        media_ids: &[Value],
    ) -> Result<std::collections::HashMap<String, MediaDocument>, MetaError> {
        let client = self.client().await?;
        let mut out = std::collections::HashMap::with_capacity(media_ids.len());
        for chunk in media_ids.chunks(1000) {
            let keys: Vec<String> = chunk.iter().map(media_id_key).collect();
            let rows = query(
                &client,
                "SELECT d.id, s.name, d.media_id, d.workspace_id, d.ino, d.body, d.created_at, d.body_size, l.media_key \
                 FROM media_latest l JOIN media_datastores s ON s.id = l.datastore_id \
                 JOIN media_documents d ON d.id = l.doc_id \
                 WHERE s.name = $1 AND l.media_key = ANY($2)",
                &[&datastore, &keys],
            )
            .await?;
            for r in &rows {
                out.insert(r.get(8), document_from_row(r));
            }
        }
        Ok(out)
    }

    /// The documents of DataStore `datastore` that `filter` matches (the newest of each media
    /// id only, or every version), oldest first, at most `limit` (capped at
    /// [`MAX_QUERY_RESULTS`]). The filter may read queryable fields only.
    pub async fn query_media(
        &self,
        datastore: &str,
        filter: &Filter,
        versions: Versions,
        limit: usize,
    ) -> Result<Vec<MediaHit>, MetaError> {
        let (record, compiled) = self.compiled_media_datastore(datastore).await?;
        compiled.check_filter(filter).map_err(invalid)?;
        let mut values = Vec::new();
        let set = filter.to_sql(&mut values);
        let latest = match versions {
            Versions::Latest => " AND d.id IN (SELECT doc_id FROM media_latest WHERE datastore_id = $1)",
            Versions::All => "",
        };
        let limit = limit.min(MAX_QUERY_RESULTS) as i64;
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(record.id)];
        for v in values {
            params.push(match v {
                SqlParam::Text(s) => Box::new(s),
                SqlParam::Bool(b) => Box::new(b),
                SqlParam::Float(f) => Box::new(f),
                SqlParam::Bytes(b) => Box::new(b),
            });
        }
        params.push(Box::new(limit));
        let sql = format!(
            "SELECT d.id, d.media_id, d.workspace_id, d.ino, d.created_at FROM media_documents d \
             WHERE d.datastore_id = $1 AND d.id IN ({set}){latest} ORDER BY d.created_at, d.id LIMIT ${}",
            params.len()
        );
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
        let client = self.client().await?;
        Ok(query(&client, &sql, &refs)
            .await?
            .iter()
            .map(|r| MediaHit {
                id: r.get(0),
                media_id: r.get(1),
                target: target_from(r.get(2), r.get(3)),
                created_at: from_system_time(r.get::<_, SystemTime>(4)),
            })
            .collect())
    }
}

/// A timeline entity a query found, with the item it is.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineHit {
    /// The collection's path (the DataStore's `timeline[].path`) and the item's index in it.
    pub collection: String,
    pub index: usize,
    pub start: f64,
    pub end: f64,
    pub region: Option<[f64; 4]>,
    /// The item; `Null` for a document kept in the object store, whose item lies at
    /// `item_span` (offset, length) in its text.
    pub item: Value,
    pub item_span: Option<(u64, u64)>,
}

impl PgMetaStore {
    /// The timeline entities of document `id` that overlap `q` (a time range and/or an area),
    /// by start time, at most `limit` (capped at [`MAX_QUERY_RESULTS`]). Reads the entity index
    /// and the matching items only, not the whole document.
    pub async fn query_media_timeline(
        &self,
        id: uuid::Uuid,
        q: &TimelineQuery,
        limit: usize,
    ) -> Result<Vec<TimelineHit>, MetaError> {
        q.check().map_err(invalid)?;
        let client = self.client().await?;
        let paths: Vec<String> = match query_opt(
            &client,
            "SELECT s.timeline FROM media_documents d JOIN media_datastores s ON s.id = d.datastore_id WHERE d.id = $1",
            &[&id],
        )
        .await?
        {
            Some(row) => serde_json::from_value::<Vec<crate::media::TimelineSpec>>(row.get(0))
                .unwrap_or_default()
                .into_iter()
                .map(|t| t.path)
                .collect(),
            None => return Err(MetaError::NotFound(format!("media document {id}"))),
        };
        let (a, b) = q.time.unwrap_or((f64::NEG_INFINITY, f64::INFINITY));
        let [qx0, qy0, qx1, qy1] = q.area.unwrap_or([0.0; 4]);
        let limit = limit.min(MAX_QUERY_RESULTS) as i64;
        let rows = query(
            &client,
            "SELECT t.collection, t.idx, t.t_start, t.t_end, t.x0, t.y0, t.x1, t.y1, \
                 d.body #> (string_to_array(($10::TEXT[])[t.collection + 1], '.') || t.idx::TEXT), \
                 t.item_offset, t.item_len \
             FROM media_timeline t JOIN media_documents d ON d.id = t.doc_id \
             WHERE t.doc_id = $1 AND t.t_start <= $3 AND t.t_end >= $2 \
               AND (NOT $4 OR (t.x0 <= $7 AND t.x1 >= $5 AND t.y0 <= $8 AND t.y1 >= $6)) \
             ORDER BY t.t_start, t.collection, t.idx LIMIT $9",
            &[
                &id,
                &a,
                &b,
                &q.area.is_some(),
                &qx0,
                &qy0,
                &qx1,
                &qy1,
                &limit,
                &paths,
            ],
        )
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let collection: i32 = r.get(0);
                let region = match (r.get(4), r.get(5), r.get(6), r.get(7)) {
                    (Some(x0), Some(y0), Some(x1), Some(y1)) => Some([x0, y0, x1, y1]),
                    _ => None,
                };
                TimelineHit {
                    collection: paths.get(collection as usize).cloned().unwrap_or_default(),
                    index: r.get::<_, i32>(1) as usize,
                    start: r.get(2),
                    end: r.get(3),
                    region,
                    item: r.get::<_, Option<Value>>(8).unwrap_or(Value::Null),
                    item_span: match (r.get::<_, Option<i64>>(9), r.get::<_, Option<i64>>(10)) {
                        (Some(offset), Some(len)) => Some((offset as u64, len as u64)),
                        _ => None,
                    },
                }
            })
            .collect())
    }
}

impl PgMetaStore {
    /// The blocks (hash, length) of document `id`'s text, in order; empty for a document kept
    /// in the metadata store.
    pub async fn media_body_blocks(&self, id: uuid::Uuid) -> Result<Vec<([u8; 32], u64)>, MetaError> {
        let client = self.client().await?;
        query(
            &client,
            "SELECT hash, len FROM media_blocks WHERE doc_id = $1 ORDER BY idx",
            &[&id],
        )
        .await?
        .iter()
        .map(|r| {
            let hash: Vec<u8> = r.get(0);
            let hash = <[u8; 32]>::try_from(hash)
                .map_err(|_| MetaError::Internal(format!("document {id}: a block hash is not 32 bytes")))?;
            Ok((hash, r.get::<_, i64>(1) as u64))
        })
        .collect()
    }

    /// [`PgMetaStore::live_paths`] of nodes of any workspaces (documents' targets), one walk
    /// per workspace.
    pub async fn live_paths_of(
        &self,
        targets: impl IntoIterator<Item = (WorkspaceId, NodeId)>,
    ) -> Result<std::collections::HashMap<(WorkspaceId, NodeId), String>, MetaError> {
        let mut by_ws: std::collections::HashMap<WorkspaceId, Vec<NodeId>> = Default::default();
        for (ws, ino) in targets {
            by_ws.entry(ws).or_default().push(ino);
        }
        let mut paths = std::collections::HashMap::new();
        for (ws, inos) in by_ws {
            for (ino, path) in self.live_paths(ws, &inos).await? {
                paths.insert((ws, ino), path);
            }
        }
        Ok(paths)
    }

    /// The live paths (`/a/b`) of nodes `inos` of workspace `ws`, for the nodes a live entry
    /// still names (one name each: a hard-linked file gets one of its names). Walks up the tree
    /// a level per query, for all of them at once.
    pub async fn live_paths(
        &self,
        ws: WorkspaceId,
        inos: &[NodeId],
    ) -> Result<std::collections::HashMap<NodeId, String>, MetaError> {
        use std::collections::HashMap;
        let client = self.client().await?;
        let root = ws_ctx(&client, ws).await?.root;
        // For each node: its (parent, name) as far as known.
        let mut up: HashMap<NodeId, Option<(NodeId, Vec<u8>)>> = HashMap::from([(root, None)]);
        let mut wanted: Vec<NodeId> = inos.iter().copied().filter(|i| !up.contains_key(i)).collect();
        for _ in 0..4096 {
            if wanted.is_empty() {
                break;
            }
            let ids: Vec<i64> = wanted.iter().map(|n| n.0 as i64).collect();
            let rows = query(
                &client,
                "SELECT DISTINCT ON (ino) ino, parent, name FROM entries \
                 WHERE ino = ANY($1) AND valid_to IS NULL AND workspace_id = $2 ORDER BY ino, id",
                &[&ids, &ws.0],
            )
            .await?;
            let mut next = Vec::new();
            for n in &wanted {
                up.entry(*n).or_insert(None);
            }
            for r in rows {
                let (ino, parent) = (
                    NodeId(r.get::<_, i64>(0) as u64),
                    NodeId(r.get::<_, i64>(1) as u64),
                );
                up.insert(ino, Some((parent, r.get(2))));
                if !up.contains_key(&parent) {
                    next.push(parent);
                }
            }
            next.sort_unstable();
            next.dedup();
            wanted = next;
        }
        let mut out = HashMap::new();
        for ino in inos {
            let mut names: Vec<&[u8]> = Vec::new();
            let mut at = *ino;
            let complete = loop {
                if at == root {
                    break true;
                }
                match up.get(&at) {
                    Some(Some((parent, name))) if names.len() < 4096 => {
                        names.push(name);
                        at = *parent;
                    }
                    _ => break false,
                }
            };
            if complete {
                let path: Vec<String> = names
                    .iter()
                    .rev()
                    .map(|n| String::from_utf8_lossy(n).into_owned())
                    .collect();
                out.insert(*ino, format!("/{}", path.join("/")));
            }
        }
        Ok(out)
    }
}

fn document_from_row(r: &tokio_postgres::Row) -> MediaDocument {
    MediaDocument {
        id: r.get(0),
        datastore: r.get(1),
        media_id: r.get(2),
        target: target_from(r.get(3), r.get(4)),
        body: r.get::<_, Option<Value>>(5).unwrap_or(Value::Null),
        stored_size: r.get::<_, Option<i64>>(7).map(|n| n as u64),
        created_at: from_system_time(r.get::<_, SystemTime>(6)),
    }
}

/// The `bool_value`, `num` and `str` columns of an index row.
fn index_columns(value: &IndexValue) -> (Option<bool>, Option<f64>, Option<Vec<u8>>) {
    match value {
        IndexValue::Bool(b) => (Some(*b), None, None),
        IndexValue::Num(n) => (None, Some(*n), None),
        IndexValue::Str(s) => (None, None, Some(s.as_bytes().to_vec())),
        IndexValue::Null | IndexValue::Other => (None, None, None),
    }
}

/// Writes the index rows of a document.
async fn index_document<C: deadpool_postgres::GenericClient>(
    tx: &C,
    compiled: &CompiledDataStore,
    datastore: uuid::Uuid,
    doc: uuid::Uuid,
    body: &Value,
    spans: Option<&[Vec<(u64, u64)>]>,
) -> Result<(), MetaError> {
    // One statement for the field rows, sent with the first timeline chunk's.
    let index = compiled.index(body);
    let names: Vec<&str> = index.iter().map(|(f, _)| f.as_str()).collect();
    let kinds: Vec<&str> = index.iter().map(|(_, v)| v.kind()).collect();
    let columns: Vec<_> = index.iter().map(|(_, v)| index_columns(v)).collect();
    let bools: Vec<Option<bool>> = columns.iter().map(|c| c.0).collect();
    let nums: Vec<Option<f64>> = columns.iter().map(|c| c.1).collect();
    let strs: Vec<Option<&[u8]>> = columns.iter().map(|c| c.2.as_deref()).collect();
    let fields = async {
        if names.is_empty() {
            return Ok(());
        }
        execute(
            tx,
            "INSERT INTO media_fields (datastore_id, field, doc_id, kind, bool_value, num, str) \
             SELECT $1, f, $2, k, b, n, s FROM unnest($3::TEXT[], $4::TEXT[], $5::BOOL[], $6::FLOAT8[], $7::BYTEA[]) \
                 AS t(f, k, b, n, s)",
            &[&datastore, &doc, &names, &kinds, &bools, &nums, &strs],
        )
        .await
        .map(drop)
    };
    let entities = compiled
        .timeline(body)
        .map_err(|e| MetaError::InvalidArgument(e.to_string()));
    let timeline = async {
        let entities = entities?;
        insert_timeline(tx, doc, &entities, spans).await
    };
    let (fields, timeline) = tokio::join!(fields, timeline);
    first_failure([fields, timeline])
}

/// Writes the timeline rows of document `doc`.
async fn insert_timeline<C: deadpool_postgres::GenericClient>(
    tx: &C,
    doc: uuid::Uuid,
    entities: &[TimelineEntity],
    spans: Option<&[Vec<(u64, u64)>]>,
) -> Result<(), MetaError> {
    // In chunks of arrays, unnested: an hour of per-frame analysis is 10^5 entities.
    for chunk in entities.chunks(TIMELINE_CHUNK) {
        let column = |f: &dyn Fn(&TimelineEntity) -> f64| chunk.iter().map(f).collect::<Vec<f64>>();
        let boxed = |i: usize| {
            chunk
                .iter()
                .map(|e| e.region.map(|r| r[i]))
                .collect::<Vec<Option<f64>>>()
        };
        let collections: Vec<i32> = chunk.iter().map(|e| e.collection as i32).collect();
        let indexes: Vec<i32> = chunk
            .iter()
            .map(|e| i32::try_from(e.index).unwrap_or(i32::MAX))
            .collect();
        let span = |e: &TimelineEntity| spans.and_then(|s| s.get(e.collection)?.get(e.index).copied());
        let item_offsets: Vec<Option<i64>> = chunk.iter().map(|e| span(e).map(|s| s.0 as i64)).collect();
        let item_lens: Vec<Option<i64>> = chunk.iter().map(|e| span(e).map(|s| s.1 as i64)).collect();
        execute(
            tx,
            "INSERT INTO media_timeline (doc_id, collection, idx, t_start, t_end, x0, y0, x1, y1, item_offset, item_len) \
             SELECT $1, * FROM unnest($2::INT4[], $3::INT4[], $4::FLOAT8[], $5::FLOAT8[], \
                 $6::FLOAT8[], $7::FLOAT8[], $8::FLOAT8[], $9::FLOAT8[], $10::INT8[], $11::INT8[])",
            &[
                &doc,
                &collections,
                &indexes,
                &column(&|e| e.start),
                &column(&|e| e.end),
                &boxed(0),
                &boxed(1),
                &boxed(2),
                &boxed(3),
                &item_offsets,
                &item_lens,
            ],
        )
        .await?;
    }
    Ok(())
}

/// Timeline rows inserted per statement.
const TIMELINE_CHUNK: usize = 10_000;

/// Removes the documents attached to purged nodes `inos`, with their index rows. A media id
/// whose newest document went points again at its newest remaining one.
pub(crate) async fn purge_node_documents<C: deadpool_postgres::GenericClient>(
    c: &C,
    inos: &[i64],
) -> Result<(), MetaError> {
    let gone = query(
        c,
        "DELETE FROM media_documents WHERE ino = ANY($1) RETURNING id, datastore_id, media_key",
        &[&inos],
    )
    .await?;
    if gone.is_empty() {
        return Ok(());
    }
    let ids: Vec<uuid::Uuid> = gone.iter().map(|r| r.get(0)).collect();
    execute(c, "DELETE FROM media_fields WHERE doc_id = ANY($1)", &[&ids]).await?;
    execute(c, "DELETE FROM media_timeline WHERE doc_id = ANY($1)", &[&ids]).await?;
    // Their blocks are no longer referenced: GC reclaims them.
    execute(c, "DELETE FROM media_blocks WHERE doc_id = ANY($1)", &[&ids]).await?;
    let orphaned = query(
        c,
        "DELETE FROM media_latest WHERE doc_id = ANY($1) RETURNING datastore_id, media_key",
        &[&ids],
    )
    .await?;
    for row in orphaned {
        let (datastore, key): (uuid::Uuid, String) = (row.get(0), row.get(1));
        execute(
            c,
            "INSERT INTO media_latest (datastore_id, media_key, doc_id, created_at) \
             SELECT datastore_id, media_key, id, created_at FROM media_documents \
             WHERE datastore_id = $1 AND media_key = $2 ORDER BY created_at DESC, id DESC LIMIT 1",
            &[&datastore, &key],
        )
        .await?;
    }
    Ok(())
}
