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
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Last run", type_ = "date", json_path = ".status.lastRun.startTime"),
    printcolumn(name = "Result", type_ = "string", json_path = ".status.lastRun.result"),
    printcolumn(
        name = "Freed",
        type_ = "integer",
        json_path = ".status.lastResult.bytesFreed"
    ),
    printcolumn(name = "Next run", type_ = "date", json_path = ".status.nextRun"),
    printcolumn(
        name = "Objects freed",
        type_ = "integer",
        json_path = ".status.lastResult.objectsFreed",
        priority = 1
    ),
    printcolumn(
        name = "Eligible",
        type_ = "integer",
        json_path = ".status.lastResult.eligibleBytes",
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("has(self.rules.purgeDeletedAfterDays) || (has(self.rules.retentionClasses) && size(self.rules.retentionClasses) > 0) || has(self.rules.expire) || has(self.rules.transition) || has(self.rules.snapshotRetention) || has(self.rules.eventRetentionDays)").message("a policy needs at least one rule"))]
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
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LifecycleRules {
    /// Purge soft-deleted files, folders and workspaces this many days after deletion
    /// (studio defaults: 7, 15, 30, 60 or 180), in every selected workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3650))]
    pub purge_deleted_after_days: Option<u32>,
    /// Retention of soft-deleted data per workspace kind and folder. Where several apply
    /// (including purgeDeletedAfterDays), the longest wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub retention_classes: Vec<RetentionClass>,
    /// Expire (soft-delete) scratch paths not accessed for a while.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire: Option<ExpireRule>,
    /// Move blocks not read for a while to a colder storage class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transition: Option<TransitionRule>,
    /// Release old snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_retention: Option<SnapshotRetention>,
    /// Purge change-feed events older than this many days (events a live cursor has not read
    /// yet are kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3650))]
    pub event_retention_days: Option<u32>,
}

/// How long soft-deleted data of some workspaces and folders is kept.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RetentionClass {
    /// Workspace kinds the class applies to; all kinds when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    pub kinds: Vec<WorkspaceKind>,
    /// Folder (absolute path inside the workspace) the class applies to, with everything
    /// below it; the whole workspace when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    #[x_kube(validation = Rule::new("self.startsWith('/') && !self.contains('\\u0000')").message("pathPrefix must be absolute, without NUL"))]
    pub path_prefix: Option<String>,
    /// Days soft-deleted data is kept before it is purged.
    #[schemars(range(min = 1, max = 3650))]
    pub days: u32,
}

/// Expire paths not accessed for `notAccessedForDays`.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
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
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
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
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
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
    /// Jobs a pass runs as: the blocks are split into this many shards by hash range, one Job
    /// each, sharing `deletesPerSecond` (each takes its share).
    #[serde(default = "default_parallelism")]
    #[schemars(range(min = 1, max = 64))]
    pub parallelism: u32,
}

impl Default for Throttle {
    fn default() -> Throttle {
        Throttle {
            deletes_per_second: default_deletes_per_second(),
            backoff_latency_ms: default_backoff_latency_ms(),
            parallelism: default_parallelism(),
        }
    }
}

fn default_parallelism() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
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
    /// What the policy is doing now: Idle, Running, Suspended or Invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<PolicyPhase>,
    /// The latest pass (running or finished).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<LastRun>,
    /// When the next pass is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run: Option<Time>,
    /// Counts of the latest pass that succeeded, from the report it stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result: Option<PassCounts>,
    /// Why the latest pass failed and where to look; cleared when a pass succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Ready and Degraded.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// What a policy is doing.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub enum PolicyPhase {
    /// Waiting for the next scheduled pass.
    Idle,
    /// A pass is running.
    Running,
    /// `suspend` is set: no new passes start.
    Suspended,
    /// The spec is invalid (see the Ready condition): no passes start.
    Invalid,
}

/// One GC pass.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastRun {
    /// The pass id (re-running the same id resumes the pass).
    pub pass_id: String,
    /// The Job running the pass; of a pass run as shards, the stem of its Jobs' names
    /// (`<jobName>-<shard>`).
    pub job_name: String,
    /// How many Jobs (shards) run the pass.
    #[serde(default = "default_parallelism", skip_serializing_if = "is_one")]
    #[schemars(range(min = 1, max = 64))]
    pub shards: u32,
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

/// What a pass did (in a dry run: what it would have done; nothing is freed).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PassCounts {
    /// The pass the counts are from.
    #[serde(default)]
    pub pass_id: String,
    /// Whether the pass was a dry run.
    #[serde(default)]
    pub dry_run: bool,
    /// Unreferenced blocks older than the grace period (candidates of the block sweep).
    pub scanned: u64,
    /// Their bytes: what the sweep may free.
    #[serde(default)]
    pub eligible_bytes: u64,
    /// Soft-deleted files and folders purged for good.
    pub purged: u64,
    /// Soft-deleted workspaces purged for good.
    #[serde(default)]
    pub purged_workspaces: u64,
    /// Paths soft-deleted because they were not accessed.
    pub expired: u64,
    /// Blocks moved to a colder storage class, and their bytes.
    pub transitioned: u64,
    #[serde(default)]
    pub transitioned_bytes: u64,
    pub snapshots_released: u64,
    /// Change-feed events purged.
    #[serde(default)]
    pub events_purged: u64,
    /// Objects deleted from the object store (blocks and orphans).
    #[serde(default)]
    pub objects_freed: u64,
    /// Bytes of the blocks deleted.
    pub bytes_freed: u64,
    /// How long the pass took, in milliseconds.
    #[serde(default)]
    pub duration_ms: u64,
}
