//! `MediaDataStore`: a DataStore of the media metadata store (docs/media.md): the analysis type
//! and version its documents hold, the JSON Schema each document must pass, the JSON Schema of
//! the media ids documents are filed under, the fields a query may filter on, the timeline
//! collections of its documents, and who may read, write and administer it. The operator
//! records it in the metadata store as DataStore `<namespace>/<name>`; documents are written
//! there by other clients, never through the resource.
//!
//! The store refuses a schema that a stored document does not pass and any change of the media
//! id schema; the resource then stays `Ready=False` (`SchemaRefused`, `MediaIdSchemaImmutable`)
//! and the stored DataStore keeps what it had: the operator never forces a schema on documents
//! stored under the previous one.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{DeletionPolicy, Subject};

/// Desired state of a media DataStore.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "studiodrive.dev",
    version = "v1alpha1",
    kind = "MediaDataStore",
    namespaced,
    status = "MediaDataStoreStatus",
    derive = "PartialEq",
    shortname = "sdmds",
    category = "studiodrive",
    cel,
    doc = "A DataStore of Studio Drive's media metadata: the JSON Schema its documents must pass, the JSON Schema of the media ids they are filed under (immutable), the fields queries filter on, its timeline collections, and who may read, write and administer it. Recorded in the metadata store as <namespace>/<name>. A schema that a stored document does not pass is refused (Ready=False, SchemaRefused) and the stored DataStore keeps its previous schema.",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Analysis", type_ = "string", json_path = ".spec.analysisType"),
    printcolumn(name = "Version", type_ = "integer", json_path = ".status.version"),
    printcolumn(name = "Wanted", type_ = "integer", json_path = ".spec.version", priority = 1),
    printcolumn(name = "Store name", type_ = "string", json_path = ".status.storeName", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 189 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("metadata.name must be a DNS-1123 subdomain of at most 189 characters (with its namespace it names the DataStore in the store, at most 253)"),
)]
#[serde(rename_all = "camelCase")]
pub struct MediaDataStoreSpec {
    /// The media analysis its documents hold (`shot-boundaries`, `loudness`, `technical`):
    /// letters, digits, '-', '.', '_' and '/'.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9._/-]+$')").message("analysisType must be letters, digits, '-', '.', '_' and '/'"))]
    pub analysis_type: String,
    /// The version of the analysis. Reported as `status.version` once the store accepted it.
    #[schemars(range(min = 1))]
    pub version: u32,
    /// The JSON Schema (draft 2020-12 and earlier; remote `$ref`s are not fetched) every
    /// document must pass. A new one is taken only when every stored document passes it.
    #[schemars(schema_with = "json_schema_object")]
    pub schema: Map<String, Value>,
    /// The JSON Schema of the media ids documents are filed under. Immutable: the store keys
    /// documents by media id, so a changed id schema would strand the ones filed already.
    #[schemars(schema_with = "json_schema_object")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("mediaIdSchema is immutable: create a new MediaDataStore for other media ids"))]
    pub media_id_schema: Map<String, Value>,
    /// Dotted paths into a document that queries may filter on (`video.width`,
    /// `tracks.0.codec`); a changed list re-indexes the stored documents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    // Items are bounded so that the API server's CEL cost estimate of the rule stays small.
    #[schemars(length(max = 64), inner(length(min = 1, max = 1039)), extend("x-kubernetes-list-type" = "set"))]
    #[x_kube(validation = Rule::new("self.all(p, p.matches('^[A-Za-z0-9_-]+([.][A-Za-z0-9_-]+)*$'))").message("queryable paths are dot-separated names of letters, digits, '_' and '-'"))]
    pub queryable: Vec<String>,
    /// Collections of timeline entities (shots, events, face regions) in a document, indexed
    /// so that a query finds the items overlapping a time range or an area.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub timeline: Vec<TimelineCollection>,
    /// Who may read and query its documents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub readers: Vec<Subject>,
    /// Who may also write documents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub writers: Vec<Subject>,
    /// Who may also change and delete the DataStore through the store's API.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub admins: Vec<Subject>,
    /// What deleting the resource does: Retain (the default) keeps the DataStore and its
    /// documents in the store (a resource of the same namespace and name adopts them again);
    /// Delete removes the DataStore and every document of it.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// A collection of timeline entities: an array in the document whose items have a start, an
/// optional end (an instant without one) and, for regions, a bounding box. Every field is a
/// dotted path: `path` from the document's root, the others from within an item.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TimelineCollection {
    /// The array, e.g. `shots` or `faces`.
    #[schemars(length(min = 1, max = 1039))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9_-]+([.][A-Za-z0-9_-]+)*$')").message("timeline paths are dot-separated names of letters, digits, '_' and '-'"))]
    pub path: String,
    /// An item's start (seconds or frames: the DataStore's unit).
    #[schemars(length(min = 1, max = 1039))]
    pub start: String,
    /// An item's end; items without `end` are instants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1039))]
    pub end: Option<String>,
    /// An item's bounding box.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<TimelineRegion>,
}

/// Where an item's bounding box is: four dotted paths within the item.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TimelineRegion {
    /// The box's left edge.
    #[schemars(length(min = 1, max = 1039))]
    pub x: String,
    /// The box's top edge.
    #[schemars(length(min = 1, max = 1039))]
    pub y: String,
    /// The box's width (not negative).
    #[schemars(length(min = 1, max = 1039))]
    pub width: String,
    /// The box's height (not negative).
    #[schemars(length(min = 1, max = 1039))]
    pub height: String,
}

/// A JSON Schema as a field: any JSON object, kept as written. `type: object` rather than an
/// untyped node, because the API server evaluates CEL rules (`mediaIdSchema`'s
/// `self == oldSelf`) only on typed nodes; an object with preserved unknown fields compares
/// by deep equality there.
fn json_schema_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Observed state of a media DataStore.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MediaDataStoreStatus {
    /// The metadata.generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The DataStore's name in the metadata store (`<namespace>/<name>`): what document
    /// writers and queries name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_name: Option<String>,
    /// The version the stored DataStore has: the last one the store accepted. It lags
    /// `spec.version` while a change is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Ready (and Degraded while the store cannot be reached).
    #[serde(default)]
    pub conditions: Vec<Condition>,
}
