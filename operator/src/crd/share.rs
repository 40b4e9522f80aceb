//! `Share`: grants subjects a permission on a workspace path (inherited by the subtree),
//! optionally until an expiry time. The operator records grants in the metadata store, where
//! the CSI driver's authoriser reads them; an expired Share's grant is revoked.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Desired state of a share.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "studiodrive.dev",
    version = "v1alpha1",
    kind = "Share",
    namespaced,
    status = "ShareStatus",
    derive = "PartialEq",
    shortname = "sdshare",
    category = "studiodrive",
    cel,
    doc = "Grants ServiceAccounts, users or groups read, write or admin access to a folder of a Studio Drive workspace.",
    printcolumn(name = "Workspace", type_ = "string", json_path = ".spec.workspace"),
    printcolumn(name = "Path", type_ = "string", json_path = ".spec.path"),
    printcolumn(name = "Permission", type_ = "string", json_path = ".spec.permission"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Expired", type_ = "boolean", json_path = ".status.expired"),
    printcolumn(name = "Expires", type_ = "date", json_path = ".spec.expiresAt", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 253 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("metadata.name must be a DNS-1123 subdomain (it names the grant in the store)"),
)]
#[serde(rename_all = "camelCase")]
pub struct ShareSpec {
    /// Name of the Workspace resource (same namespace). Immutable.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(
        validation = Rule::new("self == oldSelf").message("workspace is immutable"),
        validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("workspace must name a Workspace (DNS-1123 subdomain)"),
    )]
    pub workspace: String,
    /// Absolute folder path the grant applies to (and everything below it).
    #[serde(default = "super::snapshot::root_path")]
    #[schemars(length(min = 1, max = 4096))]
    #[x_kube(validation = Rule::new("self.startsWith('/') && !self.contains('\\u0000') && !self.contains('/../') && !self.endsWith('/..')").message("path must be absolute, without NUL or '..'"))]
    pub path: String,
    /// Who is granted access.
    #[schemars(length(min = 1, max = 64))]
    pub subjects: Vec<Subject>,
    /// read, write or admin (each includes the ones before it).
    pub permission: Permission,
    /// When the grant ends (RFC 3339); never when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
}

/// A subject of a grant (a Share's, a MediaDataStore's), as in RBAC.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
// `namespace` is a CEL reserved word: Kubernetes CEL spells the field `__namespace__`.
#[x_kube(validation = Rule::new("self.kind == 'ServiceAccount' || !has(self.__namespace__)").message("only ServiceAccount subjects have a namespace"))]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    /// ServiceAccount, User or Group.
    pub kind: SubjectKind,
    /// Name of the subject.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("!self.contains('\\u0000')").message("name must not contain NUL"))]
    pub name: String,
    /// Namespace of a ServiceAccount; the namespace of the resource that names it when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

impl Subject {
    /// The subject as the store records it: `ServiceAccount:<namespace>/<name>` (the namespace
    /// defaulting to `default_namespace`, the resource's), `User:<name>` or `Group:<name>`.
    pub fn to_store_subject(&self, default_namespace: &str) -> String {
        match self.kind {
            SubjectKind::ServiceAccount => format!(
                "ServiceAccount:{}/{}",
                self.namespace.as_deref().unwrap_or(default_namespace),
                self.name
            ),
            SubjectKind::User => format!("User:{}", self.name),
            SubjectKind::Group => format!("Group:{}", self.name),
        }
    }
}

/// Kinds of subject.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub enum SubjectKind {
    ServiceAccount,
    User,
    Group,
}

/// Permission levels, ordered.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    Read,
    Write,
    Admin,
}

/// Observed state of a share.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShareStatus {
    /// The metadata.generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// True once `expiresAt` has passed and the grant was revoked.
    #[serde(default)]
    pub expired: bool,
    /// Ready and Degraded.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}
