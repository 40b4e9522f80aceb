//! The operator's port to the metadata store: exactly the operations reconcile needs, in the
//! operator's own terms (store names, CRD enums), so that planners and reconcilers do not
//! depend on the engine's API shape.
//!
//! Two implementations: [`drive_adapter`] over `drive::PgMetaStore` (PostgreSQL), and
//! [`memory::MemoryStore`], an in-memory model with an on/off switch for outages, used by the
//! planner property tests and the kube mock tests.
//!
//! Edge behaviour every implementation keeps: `get_*` returns `Ok(None)` for a missing
//! object; `delete_*` of a missing object returns `Ok(false)`; `create_*` of an existing
//! name fails with [`StoreErrorKind::Exists`]; an unreachable store fails with
//! [`StoreErrorKind::Unavailable`].

pub mod drive_adapter;
pub mod memory;

use std::future::Future;

use drive::data::Kek;
use drive::lifecycle::LifecycleReport;
pub use drive::media::DataStoreSpec;
pub use drive::meta::{PreloadRun, PreloadState};
pub use drive::model::ObjectStoreLocation;
pub use drive::relay::SinkSpec;
use jiff::Timestamp;

use crate::crd::{MergeModeSpec, Permission, PublishModeSpec, StartFrom, WorkspaceKind};

/// A workspace as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceRecord {
    pub id: String,
    pub name: String,
    pub kind: WorkspaceKind,
    pub block_size: u32,
    pub encrypted: bool,
    pub quota_bytes: Option<u64>,
    pub owners: Vec<String>,
    /// Where its blocks live (`spec.objectStore` without credentials); immutable.
    pub object_store: Option<ObjectStoreLocation>,
}

/// A workspace to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWorkspace {
    pub name: String,
    pub kind: WorkspaceKind,
    pub block_size: u32,
    pub encrypted: bool,
    pub quota_bytes: Option<u64>,
    pub owners: Vec<String>,
    pub object_store: Option<ObjectStoreLocation>,
}

/// Changes to a workspace's mutable fields; `None` leaves a field alone.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkspaceChange {
    /// `Some(None)` removes the quota.
    pub quota_bytes: Option<Option<u64>>,
    pub owners: Option<Vec<String>>,
}

/// Files, folders and bytes of a tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub files: u64,
    pub directories: u64,
    pub bytes: u64,
}

/// A snapshot as the store holds it, with the usage of its tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub id: String,
    pub name: String,
    pub path: String,
    pub created_at: Timestamp,
    pub usage: Usage,
}

/// A grant recorded for a Share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareGrant {
    pub name: String,
    pub path: String,
    /// "ServiceAccount:ns/name", "User:alice", "Group:comp", sorted.
    pub subjects: Vec<String>,
    pub permission: Permission,
    pub expires_at: Option<Timestamp>,
}

/// An event sink as the store records it: its spec and the relay's delivery record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSinkRecord {
    /// `<namespace>/<name>` of the EventSink resource.
    pub id: String,
    /// The id of the workspace it delivers ([`WorkspaceRecord::id`]).
    pub workspace_id: String,
    /// What it delivers where (the engine's own type: plain data, validated by the engine).
    pub spec: SinkSpec,
    /// Every event of the workspace at or below this was delivered.
    pub position: i64,
    /// The relay delivering it, while its lease is live.
    pub relay: Option<String>,
    pub delivered: u64,
    pub filtered: u64,
    /// Delivery attempts that failed since the last success.
    pub consecutive_failures: u64,
    /// When the current run of failures began.
    pub failing_since: Option<Timestamp>,
    /// Empty when the last attempt succeeded.
    pub last_error: String,
    pub last_delivered_at: Option<Timestamp>,
}

/// A media DataStore as the store holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaDataStoreRecord {
    /// The DataStore's id in the store.
    pub id: String,
    /// What it holds (the engine's own type: plain data, validated by the engine). `name` is
    /// `<namespace>/<name>` of the MediaDataStore resource.
    pub spec: DataStoreSpec,
}

/// Why the store refused to change a DataStore. Nothing was changed: the stored DataStore
/// keeps its schema. Retrying the same change can succeed later only if the stored documents
/// change (a document is purged with its file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataStoreRefusal {
    /// A stored document does not pass the new schema (or timeline). The message is the
    /// store's: it names the first such document and the JSON path of its error.
    #[error("{0}")]
    SchemaRefused(String),
    /// The media id schema differs from the stored one, which cannot change.
    #[error("{0}")]
    MediaIdSchemaImmutable(String),
}

impl DataStoreRefusal {
    /// A stable snake_case label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            DataStoreRefusal::SchemaRefused(_) => "schema_refused",
            DataStoreRefusal::MediaIdSchemaImmutable(_) => "media_id_schema_immutable",
        }
    }
}

/// A failed [`StudioStore::put_media_datastore`]: refused for what stored documents or the
/// stored DataStore say, or failed as any store call fails.
#[derive(Debug, thiserror::Error)]
pub enum PutDataStoreError {
    #[error(transparent)]
    Refused(#[from] DataStoreRefusal),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Whether two JSON values are the same document, as the store compares what it keeps: JSONB
/// may give back `100` for `1e2` or `100.0`, so numbers compare by value (integers exactly,
/// others as f64), not by spelling. Object key order never matters (serde_json's maps are
/// sorted).
pub fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
            (Some(x), Some(y), _, _) => x == y,
            (_, _, Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// Whether the stored DataStore `stored` is `wanted`, comparing schemas with [`same_json`].
pub fn same_datastore(stored: &DataStoreSpec, wanted: &DataStoreSpec) -> bool {
    stored.name == wanted.name
        && stored.analysis_type == wanted.analysis_type
        && stored.version == wanted.version
        && same_json(&stored.schema, &wanted.schema)
        && same_json(&stored.media_id_schema, &wanted.media_id_schema)
        && stored.queryable == wanted.queryable
        && stored.timeline == wanted.timeline
        && stored.access == wanted.access
}

/// Classes of store failure, which decide the condition and the retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreErrorKind {
    NotFound,
    Exists,
    /// The request was refused as invalid; retrying the same request will not help.
    Invalid,
    /// A transaction conflict that outlived the store's own retries.
    Conflict,
    /// The store cannot be reached.
    Unavailable,
    Internal,
}

impl StoreErrorKind {
    /// A stable snake_case label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            StoreErrorKind::NotFound => "not_found",
            StoreErrorKind::Exists => "exists",
            StoreErrorKind::Invalid => "invalid",
            StoreErrorKind::Conflict => "conflict",
            StoreErrorKind::Unavailable => "unavailable",
            StoreErrorKind::Internal => "internal",
        }
    }
}

/// The error of creating an encrypted workspace without a key-encryption key.
pub(crate) fn kek_required(name: &str) -> StoreError {
    StoreError::new(
        StoreErrorKind::Invalid,
        format!("workspace {name} is encrypted: creating it needs a key-encryption key"),
    )
}

/// A failed store operation.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    pub kind: StoreErrorKind,
    pub message: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    /// An error of `kind` without a source.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> StoreError {
        StoreError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, StoreErrorKind::Conflict | StoreErrorKind::Unavailable)
    }
}

/// Shorthand for store results.
pub type StoreResult<T> = Result<T, StoreError>;

/// What reconcile needs from the metadata store. Workspaces are addressed by store name.
pub trait StudioStore: Send + Sync + 'static {
    fn get_workspace(&self, name: &str) -> impl Future<Output = StoreResult<Option<WorkspaceRecord>>> + Send;
    /// Creates the workspace. An encrypted one (`ws.encrypted`) gets a new random data key,
    /// stored wrapped under `kek`; without a `kek` it fails with [`StoreErrorKind::Invalid`]
    /// and creates nothing. `kek` is ignored for an unencrypted workspace.
    fn create_workspace(
        &self,
        ws: &NewWorkspace,
        kek: Option<&Kek>,
    ) -> impl Future<Output = StoreResult<WorkspaceRecord>> + Send;
    fn update_workspace(
        &self,
        name: &str,
        change: &WorkspaceChange,
    ) -> impl Future<Output = StoreResult<WorkspaceRecord>> + Send;
    /// Soft-deletes the workspace; `Ok(false)` when there was none.
    fn delete_workspace(&self, name: &str) -> impl Future<Output = StoreResult<bool>> + Send;
    fn workspace_usage(&self, ws: &WorkspaceRecord) -> impl Future<Output = StoreResult<Usage>> + Send;

    fn get_snapshot(
        &self,
        workspace: &str,
        name: &str,
    ) -> impl Future<Output = StoreResult<Option<SnapshotRecord>>> + Send;
    fn create_snapshot(
        &self,
        workspace: &str,
        name: &str,
        path: &str,
    ) -> impl Future<Output = StoreResult<SnapshotRecord>> + Send;
    /// Releases the snapshot; `Ok(false)` when there was none.
    fn delete_snapshot(&self, workspace: &str, name: &str) -> impl Future<Output = StoreResult<bool>> + Send;
    /// Moves or copies folder `from` to `path` and takes snapshot `name` of it there, in one
    /// transaction (with one `published` event).
    fn publish(
        &self,
        workspace: &str,
        name: &str,
        from: &str,
        path: &str,
        mode: PublishModeSpec,
        merge: MergeModeSpec,
    ) -> impl Future<Output = StoreResult<SnapshotRecord>> + Send;

    fn get_share(
        &self,
        workspace: &str,
        name: &str,
    ) -> impl Future<Output = StoreResult<Option<ShareGrant>>> + Send;
    /// Creates or replaces the grant `grant.name`.
    fn put_share(&self, workspace: &str, grant: &ShareGrant) -> impl Future<Output = StoreResult<()>> + Send;
    /// Revokes the grant; `Ok(false)` when there was none.
    fn delete_share(&self, workspace: &str, name: &str) -> impl Future<Output = StoreResult<bool>> + Send;

    fn get_event_sink(&self, id: &str) -> impl Future<Output = StoreResult<Option<EventSinkRecord>>> + Send;
    /// Creates the sink `id` of the workspace named `workspace`, starting at `start`, or
    /// replaces the spec of an existing one (its position and delivery record are kept; `start`
    /// is ignored). Fails with [`StoreErrorKind::Invalid`] for a spec the engine refuses,
    /// [`StoreErrorKind::NotFound`] without the workspace, and [`StoreErrorKind::Conflict`]
    /// when the sink belongs to another workspace.
    fn put_event_sink(
        &self,
        id: &str,
        workspace: &str,
        spec: &SinkSpec,
        start: StartFrom,
    ) -> impl Future<Output = StoreResult<EventSinkRecord>> + Send;
    /// Removes the sink; `Ok(false)` when there was none.
    fn delete_event_sink(&self, id: &str) -> impl Future<Output = StoreResult<bool>> + Send;

    /// The media DataStore `name` (`<namespace>/<name>`), if it exists.
    fn get_media_datastore(
        &self,
        name: &str,
    ) -> impl Future<Output = StoreResult<Option<MediaDataStoreRecord>>> + Send;
    /// Creates DataStore `spec.name`, or changes it. Fails with [`StoreErrorKind::Invalid`]
    /// for a spec the engine does not compile, and is refused ([`DataStoreRefusal`], nothing
    /// changed) when the DataStore exists with another media id schema, or when a stored
    /// document does not pass the new schema or timeline. Putting what is stored writes
    /// nothing.
    fn put_media_datastore(
        &self,
        spec: &DataStoreSpec,
    ) -> impl Future<Output = Result<MediaDataStoreRecord, PutDataStoreError>> + Send;
    /// Removes the DataStore and every document of it; `Ok(false)` when there was none.
    fn delete_media_datastore(&self, name: &str) -> impl Future<Output = StoreResult<bool>> + Send;

    /// The latest run of preload `name` on every node that recorded one, by node.
    fn preload_runs(&self, name: &str) -> impl Future<Output = StoreResult<Vec<PreloadRun>>> + Send;
    /// Records `run` as the latest run of its preload on its node.
    fn record_preload_run(&self, run: &PreloadRun) -> impl Future<Output = StoreResult<()>> + Send;
    /// Forgets every run of preload `name`; returns how many there were.
    fn delete_preload_runs(&self, name: &str) -> impl Future<Output = StoreResult<u64>> + Send;

    /// The report lifecycle pass `pass_id` stored when it finished; `Ok(None)` while it runs,
    /// or when it stored none (or one this operator cannot read).
    fn pass_report(&self, pass_id: &str)
    -> impl Future<Output = StoreResult<Option<LifecycleReport>>> + Send;
}
