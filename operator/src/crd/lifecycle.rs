//! `LifecyclePolicy`: what garbage collection and tiering do to the workspaces it selects, and
//! when. Cluster-scoped (see docs/architecture.md, "Operator and CRDs"): purging soft-deleted
//! data and sweeping blocks are storage-wide actions on a shared, deduplicated object store, so
//! they belong to cluster admins, not to tenants; a policy selects workspaces across namespaces,
//! and its GC Jobs run in the operator's namespace.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::WorkspaceKind;

/// Desired lifecycle of the selected workspaces.
// clippy reads the repeated `type_ = "..."` of kube's `printcolumn(...)` entries as duplicated
// attributes; each belongs to a different column.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "studiodrive.dev",
    version = "v1alpha1",
    kind = "LifecyclePolicy",
    status = "LifecyclePolicyStatus",
    derive = "PartialEq",
    shortname = "sdlp",
    category = "studiodrive",
    cel,
    doc = "Garbage collection, expiry, tiering and snapshot retention for the Studio Drive workspaces it selects (cluster-scoped).",
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "DryRun", type_ = "boolean", json_path = ".spec.dryRun"),
    printcolumn(name = "Last run", type_ = "date", json_path = ".status.lastRun.startTime"),
    printcolumn(name = "Result", type_ = "string", json_path = ".status.lastRun.result"),
    printcolumn(name = "Next run", type_ = "date", json_path = ".status.nextRun"),
    printcolumn(
        name = "Freed",
        type_ = "integer",
        json_path = ".status.lastResult.bytesFreed",
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("has(self.rules.purgeDeletedAfterDays) || has(self.rules.expire) || has(self.rules.transition) || has(self.rules.snapshotRetention)").message("a policy needs at least one rule"))]
#[serde(rename_all = "camelCase")]
pub struct LifecyclePolicySpec {
    /// Which workspaces the policy applies to.
    #[serde(default)]
    pub selector: WorkspaceSelector,
    /// What to do to them.
    pub rules: LifecycleRules,
    /// When passes run: a five-field cron expression, in UTC.
    #[serde(default = "default_schedule")]
    #[schemars(length(min = 9, max = 128))]
    pub schedule: String,
    /// Limits on the pass's load on the stores.
    #[serde(default)]
    pub throttle: Throttle,
    /// Report what a pass would do without changing anything.
    #[serde(default)]
    pub dry_run: bool,
    /// Stop scheduling new passes (a running pass finishes).
    #[serde(default)]
    pub suspend: bool,
}

fn default_schedule() -> String {
    "0 3 * * *".to_string()
}

/// Selects workspaces by kind, namespace and labels. An empty selector selects every workspace.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceSelector {
    /// Workspace kinds; all kinds when empty.
    #[serde(default)]
    #[schemars(length(max = 3))]
    pub kinds: Vec<WorkspaceKind>,
    /// Namespaces of the Workspace resources; all namespaces when empty.
    #[serde(default)]
    #[schemars(length(max = 256), inner(length(min = 1, max = 63)))]
    pub namespaces: Vec<String>,
    /// Labels of the Workspace resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<LabelSelector>,
}

/// The rules of a policy; each is optional, at least one is required.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LifecycleRules {
    /// Purge soft-deleted files, folders and workspaces this many days after deletion
    /// (studio defaults: 7, 15, 30, 60 or 180).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3650))]
    pub purge_deleted_after_days: Option<u32>,
    /// Expire (soft-delete) scratch paths not accessed for a while.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire: Option<ExpireRule>,
    /// Move blocks not read for a while to a colder storage class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transition: Option<TransitionRule>,
    /// Release old snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_retention: Option<SnapshotRetention>,
}

/// Expire paths not accessed for `notAccessedForDays`.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExpireRule {
    /// Absolute folder paths inside each workspace (e.g. "/scratch").
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self.all(p, p.startsWith('/') && !p.contains('\\u0000') && size(p) <= 4096)").message("paths must be absolute, without NUL"))]
    pub paths: Vec<String>,
    /// Days without access before a path expires.
    #[schemars(range(min = 1, max = 3650))]
    pub not_accessed_for_days: u32,
}

/// Transition blocks not read for `afterDays` to `storageClass`.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TransitionRule {
    /// Object store storage class, e.g. STANDARD_IA or GLACIER_IR.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Z0-9_]+$')").message("storageClass is an S3 storage class name such as STANDARD_IA"))]
    pub storage_class: String,
    /// Days without reads before blocks move.
    #[schemars(range(min = 1, max = 3650))]
    pub after_days: u32,
}

/// Which snapshots to keep.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[x_kube(validation = Rule::new("has(self.keepLast) || has(self.maxAgeDays)").message("snapshotRetention needs keepLast or maxAgeDays"))]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRetention {
    /// Keep at least the newest N snapshots of each workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub keep_last: Option<u32>,
    /// Release snapshots older than this (beyond keepLast).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3650))]
    pub max_age_days: Option<u32>,
}

/// Load limits of a pass.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Throttle {
    /// Object deletions per second.
    #[serde(default = "default_deletes_per_second")]
    #[schemars(range(min = 1, max = 100_000))]
    pub deletes_per_second: u32,
    /// Pause while metadata transactions take longer than this, in milliseconds.
    #[serde(default = "default_backoff_latency_ms")]
    #[schemars(range(min = 1, max = 600_000))]
    pub backoff_latency_ms: u32,
}

impl Default for Throttle {
    fn default() -> Throttle {
        Throttle {
            deletes_per_second: default_deletes_per_second(),
            backoff_latency_ms: default_backoff_latency_ms(),
        }
    }
}

fn default_deletes_per_second() -> u32 {
    500
}

fn default_backoff_latency_ms() -> u32 {
    250
}

/// Observed state of a policy.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LifecyclePolicyStatus {
    /// The metadata.generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The latest pass (running or finished).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<LastRun>,
    /// When the next pass is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run: Option<Time>,
    /// Counts of the latest finished pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result: Option<PassCounts>,
    /// Ready and Degraded.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// One GC pass.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastRun {
    /// The pass id (re-running the same id resumes the pass).
    pub pass_id: String,
    /// The Job running the pass.
    pub job_name: String,
    /// The scheduled time the pass is for.
    pub scheduled_time: Time,
    /// When the Job was created.
    pub start_time: Time,
    /// When the Job finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Running, Succeeded or Failed.
    pub result: PassResult,
}

/// Outcome of a pass.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub enum PassResult {
    Running,
    Succeeded,
    Failed,
}

/// What a pass did.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PassCounts {
    pub scanned: u64,
    pub purged: u64,
    pub expired: u64,
    pub transitioned: u64,
    pub snapshots_released: u64,
    pub bytes_freed: u64,
}
