//! `Workspace`: a partition of the namespace in the metadata store (user, project or team).
//!
//! The store name of a Workspace is `<namespace>.<name>`. Store names are global while
//! Workspaces are namespaced; Kubernetes namespaces contain no dots, so the first dot always
//! separates the two halves and two resources can never claim the same store workspace.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Desired state of a workspace.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "studiodrive.dev",
    version = "v1alpha1",
    kind = "Workspace",
    namespaced,
    status = "WorkspaceStatus",
    derive = "PartialEq",
    shortname = "sdws",
    category = "studiodrive",
    cel,
    doc = "A Studio Drive workspace: a partition of the file system with its own kind, block size, encryption and quota.",
    printcolumn(name = "Kind", type_ = "string", json_path = ".spec.kind"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Files", type_ = "integer", json_path = ".status.usage.files"),
    printcolumn(name = "Bytes", type_ = "integer", json_path = ".status.usage.bytes"),
    printcolumn(name = "Quota", type_ = "integer", json_path = ".spec.quotaBytes", priority = 1),
    printcolumn(name = "Store name", type_ = "string", json_path = ".status.workspaceName", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 200 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("metadata.name must be a DNS-1123 subdomain of at most 200 characters (it becomes part of the store name)"),
)]
#[x_kube(
    validation = Rule::new("has(self.objectStore) == has(oldSelf.objectStore)").message("objectStore cannot be added or removed after creation"),
    validation = Rule::new("(has(self.encryption) && self.encryption.enabled) == (has(oldSelf.encryption) && oldSelf.encryption.enabled)").message("encryption cannot be turned on or off after creation"),
)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceSpec {
    /// user (personal, mutable), project (write-once assets) or team (shared through Shares).
    /// Immutable.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("kind is immutable"))]
    pub kind: WorkspaceKind,

    /// Users or groups that own the workspace ("User:alice", "Group:comp").
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub owners: Vec<String>,

    /// Size of the blocks files are cut into, in bytes (1 MiB to 64 MiB). Immutable.
    #[serde(default = "default_block_size")]
    #[schemars(range(min = 1_048_576, max = 67_108_864))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("blockSizeBytes is immutable"))]
    pub block_size_bytes: u32,

    /// Per-block encryption. Cannot be turned on or off after creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,

    /// Where the workspace's blocks live; the operator's default object store when absent.
    /// Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("objectStore is immutable"))]
    pub object_store: Option<ObjectStoreRef>,

    /// Maximum bytes of live data; unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub quota_bytes: Option<u64>,

    /// What deleting the resource does to the data: Retain keeps the workspace in the store,
    /// Delete soft-deletes it (the lifecycle purge reclaims it later).
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

fn default_block_size() -> u32 {
    4 << 20
}

/// Workspace kinds.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WorkspaceKind {
    /// Personal and mutable.
    #[default]
    User,
    /// Write-once: committed files cannot be overwritten or deleted except by lifecycle.
    Project,
    /// Shared by a team; access through Shares.
    Team,
}

/// What happens to the data when the Workspace resource is deleted.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the workspace in the metadata store (re-creating the resource adopts it).
    #[default]
    Retain,
    /// Soft-delete the workspace; lifecycle purges it after its retention.
    Delete,
}

/// Per-block encryption settings.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[x_kube(validation = Rule::new("!self.enabled || has(self.keySecretRef)").message("encryption.enabled needs keySecretRef"))]
#[serde(rename_all = "camelCase")]
pub struct Encryption {
    /// Encrypt blocks with AES-256-GCM under a per-workspace data key.
    #[serde(default)]
    pub enabled: bool,
    /// The Secret key holding the key-encryption key that wraps the data key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_secret_ref: Option<SecretKeyRef>,
}

/// A key in a Secret in the resource's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("must be a Secret name (DNS-1123 subdomain)"))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A Secret in the resource's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("must be a Secret name (DNS-1123 subdomain)"))]
    pub name: String,
}

/// An object store bucket for a workspace's blocks. Credentials come only from a Secret
/// (keys `accessKeyId` and `secretAccessKey`), never inline.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStoreRef {
    /// Bucket name.
    #[schemars(length(min = 3, max = 63))]
    pub bucket: String,
    /// Key prefix inside the bucket.
    #[serde(default)]
    #[schemars(length(max = 512))]
    pub prefix: String,
    /// S3-compatible endpoint URL; AWS when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("endpoint must be an http(s) URL"))]
    pub endpoint: Option<String>,
    /// Region of the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub region: Option<String>,
    /// Secret with `accessKeyId` and `secretAccessKey`; the default credential chain when
    /// absent (IRSA, instance profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
}

/// Observed state of a workspace.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceStatus {
    /// The metadata.generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The workspace id in the metadata store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
    /// The workspace's name in the metadata store (`<namespace>.<name>`): what volumes name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_name: Option<String>,
    /// Live files and bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<WorkspaceUsage>,
    /// Ready, Progressing and Degraded.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// Files, folders and bytes of the live tree.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceUsage {
    pub files: u64,
    pub directories: u64,
    pub bytes: u64,
}
