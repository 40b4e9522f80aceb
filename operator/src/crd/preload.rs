//! `Preload`: fetches the files a manifest names (paths, globs, frame ranges) from a
//! workspace into the node caches of the selected nodes before a job reads them. The operator
//! runs one Job per node, pinned to it, that fills the node plugin's cache of the workspace
//! (`studiodrive-csi preload --node-cache`) and records its progress in the metadata store as
//! preload `<namespace>/<name>` on that node; the status reports each node's record. A volume
//! whose `preload` attribute names `<namespace>/<name>` makes its pod wait on that node until
//! the preload there is done.
//!
//! The spec is immutable, as a Job's is: a different manifest, workspace or node set is a new
//! Preload, so a status never mixes runs of two manifests.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Desired state of a preload.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "studiodrive.dev",
    version = "v1alpha1",
    kind = "Preload",
    namespaced,
    status = "PreloadStatus",
    derive = "PartialEq",
    shortname = "sdpreload",
    category = "studiodrive",
    cel,
    doc = "Fetches the files a manifest names from a Studio Drive workspace into the node caches of the selected nodes ahead of a job: one Job per node fills the node plugin's cache and records its progress, which the status reports per node. A volume whose `preload` attribute names `<namespace>/<name>` waits on its node until the preload there is done. The spec is immutable.",
    printcolumn(name = "Workspace", type_ = "string", json_path = ".spec.workspace"),
    printcolumn(name = "Nodes", type_ = "integer", json_path = ".status.nodesSelected"),
    printcolumn(name = "Done", type_ = "integer", json_path = ".status.nodesDone"),
    printcolumn(name = "Failed", type_ = "integer", json_path = ".status.nodesFailed"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", priority = 1),
    printcolumn(name = "Deadline", type_ = "date", json_path = ".spec.deadline", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 189 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("metadata.name must be a DNS-1123 subdomain of at most 189 characters (with its namespace it names the preload in the store, at most 253)"),
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("spec is immutable: create a new Preload for another manifest, workspace, node set or deadline"))]
#[serde(rename_all = "camelCase")]
pub struct PreloadSpec {
    /// Name of the Workspace resource (same namespace) the files are read from.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("workspace must name a Workspace (DNS-1123 subdomain)"))]
    pub workspace: String,
    /// The manifest: one workspace path per line, relative to the workspace root, with globs
    /// (`*.exr`), `**` for any depth, and frame patterns with ranges
    /// (`shot010/comp/sh010_comp.%04d.exr [1001-1240]`); `#` starts a comment.
    #[schemars(length(min = 1, max = 65536))]
    pub manifest: String,
    /// The nodes whose caches are filled (labels of Node objects); every node when absent.
    /// Nodes that join later and match are preloaded too, until the deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// When the preload must be done: no Job starts after it, Jobs still running are stopped
    /// at it (their activeDeadlineSeconds), and nodes not done by then count as failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Time>,
}

/// Where a node's preload is.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub enum PreloadPhase {
    /// Its Job is created; nothing recorded yet.
    Pending,
    /// Fetching.
    Running,
    /// Every file the manifest names is in the node's cache.
    Done,
    /// Some file is missing or could not be fetched, its Job failed, it stopped reporting, or
    /// the deadline passed first.
    Failed,
}

/// One node's preload, from its Job and the run it recorded.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreloadNodeStatus {
    /// The Node's name (the node plugin's node id).
    pub node: String,
    pub phase: PreloadPhase,
    /// Files the manifest resolved to on this node's run, and their bytes.
    #[serde(default)]
    pub files: u64,
    #[serde(default)]
    pub bytes: u64,
    /// Files (and bytes) whose every block is in the node's cache.
    #[serde(default)]
    pub done_files: u64,
    #[serde(default)]
    pub done_bytes: u64,
    /// Files missing or not fetched.
    #[serde(default)]
    pub failed_files: u64,
    /// Why it failed: the first few `path: reason` of the run, or what stopped it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// The Job that fills this node's cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// When the run last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Time>,
}

/// Observed state of a preload.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreloadStatus {
    /// The metadata.generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The name volumes wait for in their `preload` attribute: `<namespace>/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preload_name: Option<String>,
    /// Nodes the selector matches now, and of them those done and failed.
    #[serde(default)]
    pub nodes_selected: u32,
    #[serde(default)]
    pub nodes_done: u32,
    #[serde(default)]
    pub nodes_failed: u32,
    /// Per node, sorted by name: the selected nodes and any other node that recorded a run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<PreloadNodeStatus>,
    /// Ready (every selected node is done) and Degraded (some node failed).
    #[serde(default)]
    pub conditions: Vec<Condition>,
}
