//! Status conditions: the `Ready` / `Progressing` / `Degraded` vocabulary, reasons, and a merge
//! that keeps `lastTransitionTime` unless the status actually flips (so that re-applying the
//! same state writes an identical status and GitOps tools see no drift).

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition type: the resource is in its desired state in the metadata store.
pub const READY: &str = "Ready";
/// Condition type: the operator is still working towards the desired state.
pub const PROGRESSING: &str = "Progressing";
/// Condition type: something is wrong that needs a human or a retry.
pub const DEGRADED: &str = "Degraded";

/// PascalCase condition and event reasons. Stable: users alert on them.
pub mod reason {
    /// The resource exists in the metadata store and matches its spec.
    pub const RECONCILED: &str = "Reconciled";
    /// The resource is being created.
    pub const CREATING: &str = "Creating";
    /// The spec cannot be applied (it slipped past schema validation or conflicts with the
    /// store). Nothing is changed until the spec is fixed.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The metadata store is unreachable; the operator retries with backoff.
    pub const STORE_UNAVAILABLE: &str = "StoreUnavailable";
    /// The metadata store refused the operation for another reason.
    pub const STORE_ERROR: &str = "StoreError";
    /// The workspace a Snapshot or Share refers to does not exist (yet).
    pub const WORKSPACE_NOT_FOUND: &str = "WorkspaceNotFound";
    /// An encrypted Workspace's key Secret, or the key in it, does not exist (yet).
    pub const KEY_SECRET_MISSING: &str = "KeySecretMissing";
    /// An encrypted Workspace's key Secret holds something that is not a key-encryption key.
    pub const INVALID_KEY: &str = "InvalidKey";
    /// An encrypted Workspace's key Secret could not be read (forbidden, API unreachable).
    pub const KEY_SECRET_UNREADABLE: &str = "KeySecretUnreadable";
    /// An EventSink's credential Secret is missing, lacks its key, holds something unusable,
    /// or the operator has no sink secrets key to seal it with.
    pub const SINK_SECRET_UNAVAILABLE: &str = "SinkSecretUnavailable";
    /// The Workspace resource is being deleted.
    pub const DELETING: &str = "Deleting";
    /// A Share has passed its expiry time and its grant was revoked.
    pub const EXPIRED: &str = "Expired";
    /// A LifecyclePolicy is waiting for its next scheduled pass.
    pub const SCHEDULED: &str = "Scheduled";
    /// A GC pass Job is running.
    pub const PASS_RUNNING: &str = "PassRunning";
    /// The last GC pass failed.
    pub const PASS_FAILED: &str = "PassFailed";
    /// An EventSink is recorded and a relay holds its lease; deliveries succeed (or there has
    /// been nothing to deliver).
    pub const DELIVERING: &str = "Delivering";
    /// An EventSink is recorded but no relay holds its lease: nothing delivers it.
    pub const NO_RELAY: &str = "NoRelay";
    /// An EventSink's deliveries have been failing for longer than the threshold.
    pub const DELIVERY_FAILING: &str = "DeliveryFailing";
    /// A Preload's Jobs are filling the selected nodes' caches.
    pub const PRELOADING: &str = "Preloading";
    /// Every selected node holds every file of a Preload's manifest.
    pub const PRELOADED: &str = "Preloaded";
    /// Some node of a Preload failed (a file missing or not fetched, its Job failed, it
    /// stopped reporting).
    pub const PRELOAD_FAILED: &str = "PreloadFailed";
    /// A Preload's deadline passed before every selected node was done.
    pub const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
    /// A Preload's node selector matches no node.
    pub const NO_NODES: &str = "NoNodes";
    /// A Preload of a workspace the preload Jobs cannot read alone (encrypted, or with an
    /// object store of its own whose credentials only its volumes carry).
    pub const UNSUPPORTED: &str = "Unsupported";
    /// A MediaDataStore is recorded in the metadata store as its spec says.
    pub const ACCEPTED: &str = "Accepted";
    /// The store refused a MediaDataStore's new schema (or timeline): a stored document does
    /// not pass it. The stored DataStore is unchanged; retried with backoff.
    pub const SCHEMA_REFUSED: &str = "SchemaRefused";
    /// A MediaDataStore's media id schema differs from the stored DataStore's, which cannot
    /// change. The stored DataStore is unchanged.
    pub const MEDIA_ID_SCHEMA_IMMUTABLE: &str = "MediaIdSchemaImmutable";
}

/// A condition as a planner computes it, before timestamps are attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Desired {
    /// A condition of `type_` that holds (`True`).
    pub fn yes(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Desired {
        Desired {
            type_,
            status: true,
            reason,
            message: message.into(),
        }
    }

    /// A condition of `type_` that does not hold (`False`).
    pub fn no(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Desired {
        Desired {
            type_,
            status: false,
            reason,
            message: message.into(),
        }
    }
}

fn status_str(status: bool) -> &'static str {
    if status { "True" } else { "False" }
}

/// Builds the condition list from the desired conditions. An existing condition of the same
/// type keeps its `lastTransitionTime` when its status is unchanged; conditions not desired
/// any more are dropped. The output is sorted by type so that it compares stably.
pub fn merge(existing: &[Condition], desired: &[Desired], generation: i64, now: Timestamp) -> Vec<Condition> {
    let mut out: Vec<Condition> = desired
        .iter()
        .map(|d| {
            let status = status_str(d.status);
            let since = existing
                .iter()
                .find(|c| c.type_ == d.type_ && c.status == status)
                .map_or(Time(now), |c| c.last_transition_time.clone());
            Condition {
                type_: d.type_.to_string(),
                status: status.to_string(),
                reason: d.reason.to_string(),
                message: d.message.clone(),
                observed_generation: Some(generation),
                last_transition_time: since,
            }
        })
        .collect();
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// The condition of `type_`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the `type_` condition is present and `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).expect("valid test timestamp")
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let first = merge(
            &[],
            &[Desired::no(READY, reason::CREATING, "creating")],
            1,
            at(10),
        );
        let same = merge(
            &first,
            &[Desired::no(READY, reason::STORE_UNAVAILABLE, "down")],
            2,
            at(20),
        );
        assert_eq!(same[0].last_transition_time, Time(at(10)));
        assert_eq!(same[0].reason, "StoreUnavailable");
        assert_eq!(same[0].observed_generation, Some(2));
        let flipped = merge(&same, &[Desired::yes(READY, reason::RECONCILED, "ok")], 2, at(30));
        assert_eq!(flipped[0].last_transition_time, Time(at(30)));
        assert_eq!(flipped[0].status, "True");
    }

    #[test]
    fn merge_is_sorted_and_drops_undesired_types() {
        let before = merge(
            &[],
            &[
                Desired::yes(READY, reason::RECONCILED, ""),
                Desired::yes(DEGRADED, reason::STORE_ERROR, ""),
            ],
            1,
            at(1),
        );
        assert_eq!(
            before.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(),
            ["Degraded", "Ready"]
        );
        let after = merge(&before, &[Desired::yes(READY, reason::RECONCILED, "")], 1, at(2));
        assert_eq!(after.len(), 1);
        assert!(is_true(&after, READY));
        assert!(!is_true(&after, DEGRADED));
    }
}
