//! `Snapshot`: an O(1) read-only snapshot of a workspace folder. The whole spec is immutable;
//! deleting the resource releases the snapshot in the store.
//!
//! With `publishFrom` it is an explicit publish (Netflix Drive's, beside auto-sync): in one
//! transaction the finished folder is moved (or copied, sharing blocks) to `path`, its
//! published place, the snapshot of it is taken, and one `published` event names the
//! snapshot; concurrent readers see the folder before or after, never half of it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Desired state of a snapshot.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "studiodrive.dev",
    version = "v1alpha1",
    kind = "Snapshot",
    namespaced,
    status = "SnapshotStatus",
    derive = "PartialEq",
    shortname = "sdsnap",
    category = "studiodrive",
    cel,
    doc = "A read-only, constant-time snapshot of a folder of a Studio Drive workspace.",
    printcolumn(name = "Workspace", type_ = "string", json_path = ".spec.workspace"),
    printcolumn(name = "Path", type_ = "string", json_path = ".spec.path"),
    printcolumn(name = "ReadyToUse", type_ = "boolean", json_path = ".status.readyToUse"),
    printcolumn(name = "Files", type_ = "integer", json_path = ".status.files"),
    printcolumn(name = "Bytes", type_ = "integer", json_path = ".status.bytes"),
    printcolumn(name = "Created", type_ = "date", json_path = ".status.creationTime", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 253 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("metadata.name must be a DNS-1123 subdomain (it names the snapshot in the store)"),
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("a Snapshot's spec is immutable: create a new Snapshot instead"))]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSpec {
    /// Name of the Workspace resource (same namespace).
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("workspace must name a Workspace (DNS-1123 subdomain)"))]
    pub workspace: String,
    /// Absolute folder path inside the workspace; "/" for all of it.
    #[serde(default = "root_path")]
    #[schemars(length(min = 1, max = 4096))]
    #[x_kube(validation = Rule::new("self.startsWith('/') && !self.contains('\\u0000') && !self.contains('/../') && !self.endsWith('/..')").message("path must be absolute, without NUL or '..'"))]
    pub path: String,
    /// Publish first: move or copy this folder to `path` and take the snapshot of it there,
    /// in one transaction. Done once: the snapshot existing is the record that it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_from: Option<PublishFrom>,
}

/// Where a published folder comes from and how it is placed.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PublishFrom {
    /// Absolute folder path inside the workspace: the finished work.
    #[schemars(length(min = 1, max = 4096))]
    #[x_kube(validation = Rule::new("self.startsWith('/') && !self.contains('\\u0000') && !self.contains('/../') && !self.endsWith('/..')").message("publishFrom.path must be absolute, without NUL or '..'"))]
    pub path: String,
    /// `Move` (the default: the folder leaves its working place) or `Copy` (it stays; the
    /// published copy shares its blocks).
    #[serde(default)]
    pub mode: PublishModeSpec,
    /// When `path` exists already: `Fail` (the default: nothing is written), `Overwrite` or
    /// `Skip` (merge, as a copy's merge modes).
    #[serde(default)]
    pub merge: MergeModeSpec,
}

/// How a folder is published.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, JsonSchema)]
pub enum PublishModeSpec {
    #[default]
    Move,
    Copy,
}

/// What a publish does with what is at its destination already.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, JsonSchema)]
pub enum MergeModeSpec {
    #[default]
    Fail,
    Overwrite,
    Skip,
}

pub(crate) fn root_path() -> String {
    "/".to_string()
}

/// Observed state of a snapshot.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotStatus {
    /// The metadata.generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// True once the snapshot exists in the store and can be mounted.
    #[serde(default)]
    pub ready_to_use: bool,
    /// The snapshot id in the metadata store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// When the snapshot was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<Time>,
    /// Files in the snapshot's tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    /// Bytes in the snapshot's tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Ready and Degraded.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}
