//! What the HTTP API sends and receives. The OpenAPI description's schemas are generated from
//! these types (schemars), so the description and the server cannot drift apart.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Every refusal and failure.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ErrorDetail {
    /// A stable name: `Invalid`, `Unauthenticated`, `Forbidden`, `NotFound`, `Conflict`,
    /// `TooLarge`, `Unavailable`, `Internal`, `Lost`.
    pub code: String,
    pub message: String,
}

/// A DataStore the caller may read.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataStoreView {
    pub namespace: String,
    pub name: String,
    pub analysis_type: String,
    pub version: u32,
    /// The JSON Schema documents must pass.
    pub schema: Value,
    pub media_id_schema: Value,
    pub queryable: Vec<String>,
    /// The timeline collections (path, start, end, region).
    pub timeline: Vec<Value>,
    /// What the caller may do: `reader`, `writer` or `admin`.
    pub role: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct DataStoreList {
    pub items: Vec<DataStoreView>,
}

/// Where a document is attached: a file or folder of a workspace (it follows renames).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetRef {
    pub workspace: String,
    /// An absolute path in the workspace.
    pub path: String,
}

/// A document to write.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DocumentWrite {
    /// The media id (any JSON the DataStore's media id schema accepts).
    pub media_id: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetRef>,
    /// The document (checked against the DataStore's schema).
    pub document: Value,
}

/// Where a stored document is attached, as it is now. `path` is given only to callers that
/// may read it (the workspace's namespace, owners and Shares decide).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct TargetView {
    pub workspace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DocumentView {
    #[schemars(with = "String")]
    pub id: uuid::Uuid,
    /// `<namespace>/<name>` of its DataStore.
    pub datastore: String,
    pub media_id: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetView>,
    /// RFC 3339.
    pub created_at: String,
    /// The document. Absent from listings and write results for a document kept in the
    /// object store (`storedSize`): `GET /v1/documents/{id}` returns it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<Value>,
    /// Bytes of JSON, for a document over 1 MiB, whose text is kept in the object store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_size: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct DocumentList {
    pub items: Vec<DocumentView>,
}

/// A query across a DataStore (docs/media.md: fields, operators, and/or/not).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// The filter tree: `{"field": "fps", "op": ">=", "value": 24}`, `{"and": [...]}`,
    /// `{"or": [...]}`, `{"not": {...}}`.
    pub filter: Value,
    /// Every version, not only the latest of each media id.
    #[serde(default)]
    pub all: bool,
    /// At most this many hits (1 to 10000; 1000 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryHit {
    #[schemars(with = "String")]
    pub id: uuid::Uuid,
    pub media_id: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct QueryResult {
    pub hits: Vec<QueryHit>,
}

/// Timeline entities of one document overlapping a time range and/or an area.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimelineRequest {
    /// Start and end of the time range (both included; both or neither).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<f64>,
    /// x0, y0, x1, y1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub area: Option<[f64; 4]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct TimelineEntityView {
    pub collection: String,
    pub index: u64,
    pub start: f64,
    pub end: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<[f64; 4]>,
    pub item: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct TimelineResult {
    pub entities: Vec<TimelineEntityView>,
}

/// A file, folder or other node.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    pub name: String,
    /// `file`, `directory`, `symlink`, `fifo`, `socket`, `char-device`, `block-device`.
    pub kind: String,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// RFC 3339.
    pub mtime: String,
    pub content_version: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct EntryList {
    pub entries: Vec<NodeView>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    /// A DNS label.
    pub name: String,
    /// The folder to snapshot ("/" when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotView {
    pub name: String,
    pub path: String,
    pub epoch: i64,
    /// RFC 3339.
    pub created_at: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PublishModeName {
    Move,
    Copy,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MergeName {
    Fail,
    Overwrite,
    Skip,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    pub source: String,
    pub destination: String,
    /// The snapshot taken of the destination in the same transaction (a DNS label).
    pub snapshot: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<PublishModeName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge: Option<MergeName>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PublishResult {
    pub snapshot: SnapshotView,
    /// Whether the source was renamed into place (otherwise it was copied, sharing blocks).
    pub renamed: bool,
}

/// An asynchronous operation (`Prefer: respond-async`): poll `GET /v1/operations/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperationView {
    #[schemars(with = "String")]
    pub id: uuid::Uuid,
    pub kind: String,
    /// `running`, `succeeded` or `failed`.
    pub state: String,
    /// The answer the synchronous request would have given, once succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
    /// RFC 3339.
    pub started_at: String,
}
