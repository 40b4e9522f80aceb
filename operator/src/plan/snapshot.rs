//! Planner for `Snapshot`: take the snapshot once, report it, never re-take it silently.
//!
//! A snapshot records the tree at the moment it was taken. If the store loses a snapshot that
//! the status says was taken, re-taking it would capture a different tree under the same name,
//! so the planner reports `SnapshotLost` instead and leaves recovery to a human.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{
    EventNote, Plan, SpecError, WAIT_FOR_DEPENDENCY, canonical_path, invalid_spec_conditions,
    invalid_spec_event, store_name,
};
use crate::crd::conditions::{self, Desired, reason};
use crate::crd::{MergeModeSpec, PublishModeSpec, SnapshotSpec, SnapshotStatus};
use crate::plan::workspace::workspace_store_name;
use crate::store::{SnapshotRecord, WorkspaceRecord};

/// Reason: the store no longer has a snapshot this resource took.
pub const SNAPSHOT_LOST: &str = "SnapshotLost";

/// How often a ready snapshot is looked at again (it is immutable; this only catches loss).
const SNAPSHOT_RESYNC: Duration = Duration::from_secs(3600);

/// The resource being planned.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub generation: i64,
    pub spec: &'a SnapshotSpec,
    pub status: Option<&'a SnapshotStatus>,
}

/// What the store holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub workspace: Option<WorkspaceRecord>,
    pub snapshot: Option<SnapshotRecord>,
}

/// A store operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Create {
        workspace: String,
        name: String,
        path: String,
    },
    /// Move or copy `from` to `path` and take the snapshot `name` of it, in one transaction.
    Publish {
        workspace: String,
        name: String,
        from: String,
        path: String,
        mode: PublishModeSpec,
        merge: MergeModeSpec,
    },
    Delete {
        workspace: String,
        name: String,
    },
}

/// Store names (workspace, snapshot) and the canonical path of a Snapshot resource.
pub fn targets(input: &Input<'_>) -> Result<(String, String, String), SpecError> {
    let workspace = workspace_store_name(input.namespace, &input.spec.workspace)?;
    store_name(input.name)?;
    let path = canonical_path(&input.spec.path)?;
    if let Some(from) = &input.spec.publish_from {
        let from = canonical_path(&from.path).map_err(|e| SpecError(format!("publishFrom: {e}")))?;
        let within = |a: &str, b: &str| a == b || b == "/" || a.starts_with(&format!("{b}/"));
        if within(&path, &from) || within(&from, &path) {
            return Err(SpecError(format!(
                "publishFrom.path {from} and path {path} must be separate folders (neither inside the other)"
            )));
        }
    }
    Ok((workspace, input.name.to_string(), path))
}

fn status_from(
    input: &Input<'_>,
    snap: Option<&SnapshotRecord>,
    desired: &[Desired],
    now: Timestamp,
) -> SnapshotStatus {
    let previous = input.status.map(|s| s.conditions.as_slice()).unwrap_or_default();
    // Keep what was learnt about a snapshot even when it is now lost or the spec is bad.
    let kept = input.status.cloned().unwrap_or_default();
    SnapshotStatus {
        observed_generation: Some(input.generation),
        ready_to_use: snap.is_some() && desired.iter().any(|d| d.type_ == conditions::READY && d.status),
        snapshot_id: snap.map(|s| s.id.clone()).or(kept.snapshot_id),
        creation_time: snap.map(|s| Time(s.created_at)).or(kept.creation_time),
        files: snap.map(|s| s.usage.files).or(kept.files),
        bytes: snap.map(|s| s.usage.bytes).or(kept.bytes),
        conditions: conditions::merge(previous, desired, input.generation, now),
    }
}

/// Plans one reconcile of a live Snapshot.
pub fn plan(input: &Input<'_>, observed: &Observed, now: Timestamp) -> Plan<Op, SnapshotStatus> {
    let previous = input.status.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let invalid = |err: SpecError, snap: Option<&SnapshotRecord>| Plan {
        ops: Vec::new(),
        status: status_from(input, snap, &invalid_spec_conditions(&err), now),
        events: invalid_spec_event(previous, &err),
        requeue: None,
    };
    let (workspace, name, path) = match targets(input) {
        Ok(t) => t,
        Err(err) => return invalid(err, None),
    };
    if observed.workspace.is_none() {
        let desired = [Desired::no(
            conditions::READY,
            reason::WORKSPACE_NOT_FOUND,
            format!("workspace {workspace} does not exist in the metadata store"),
        )];
        return Plan {
            ops: Vec::new(),
            status: status_from(input, None, &desired, now),
            events: Vec::new(),
            requeue: Some(WAIT_FOR_DEPENDENCY),
        };
    }
    match &observed.snapshot {
        Some(snap) if snap.path != path => invalid(
            SpecError(format!(
                "the stored snapshot is of {}, the spec says {path}; path is immutable",
                snap.path
            )),
            Some(snap),
        ),
        Some(snap) => {
            let desired = [Desired::yes(
                conditions::READY,
                reason::RECONCILED,
                "snapshot is ready to use",
            )];
            Plan {
                ops: Vec::new(),
                status: status_from(input, Some(snap), &desired, now),
                events: Vec::new(),
                requeue: Some(SNAPSHOT_RESYNC),
            }
        }
        None if input.status.is_some_and(|s| s.snapshot_id.is_some()) => {
            let message = "the metadata store no longer has this snapshot; delete and re-create the resource to take a new one";
            let desired = [Desired::no(conditions::READY, SNAPSHOT_LOST, message)];
            let events = if super::previous_ready_reason(previous) == Some(SNAPSHOT_LOST) {
                Vec::new()
            } else {
                vec![EventNote::warning(SNAPSHOT_LOST, "Observe", message)]
            };
            Plan {
                ops: Vec::new(),
                status: status_from(input, None, &desired, now),
                events,
                requeue: Some(SNAPSHOT_RESYNC),
            }
        }
        None => {
            let desired = [Desired::no(
                conditions::READY,
                reason::CREATING,
                format!("taking snapshot of {workspace}:{path}"),
            )];
            let (note, op) = match &input.spec.publish_from {
                None => (
                    format!("took snapshot {name} of {workspace}:{path}"),
                    Op::Create {
                        workspace,
                        name,
                        path,
                    },
                ),
                Some(from) => (
                    format!(
                        "published {workspace}:{} to {path} ({:?}) as snapshot {name}",
                        from.path, from.mode
                    ),
                    Op::Publish {
                        workspace,
                        name,
                        // Checked by `targets`.
                        from: canonical_path(&from.path).unwrap_or_default(),
                        path,
                        mode: from.mode,
                        merge: from.merge,
                    },
                ),
            };
            Plan {
                ops: vec![op],
                status: status_from(input, None, &desired, now),
                events: vec![EventNote::normal("Created", "Create", note)],
                requeue: Some(Duration::ZERO),
            }
        }
    }
}

/// Plans cleanup of a Snapshot being deleted: release it when the store has it.
pub fn plan_cleanup(input: &Input<'_>, observed: &Observed) -> Vec<Op> {
    match (targets(input), &observed.snapshot) {
        (Ok((workspace, name, _)), Some(_)) => vec![Op::Delete { workspace, name }],
        _ => Vec::new(),
    }
}
