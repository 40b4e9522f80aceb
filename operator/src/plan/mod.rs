//! Pure planners: (spec, observed store facts, previous status, now) -> [`Plan`].
//!
//! No client, no clock reads, no I/O. A planner's contract, checked by the property tests:
//! applying `ops` to the store and planning again with the resulting observation yields no
//! ops and the same status. Invalid specs produce a plan with no ops and `Ready=False`
//! (reason `InvalidSpec`), never a panic or an error.

pub mod eventsink;
pub mod lifecycle;
pub mod mediadatastore;
pub mod preload;
pub mod share;
pub mod snapshot;
pub mod workspace;

use std::time::Duration;

use crate::crd::conditions::{self, Desired};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// How soon to look again after a successful reconcile (level-triggered resync).
pub const RESYNC: Duration = Duration::from_secs(300);
/// How soon to look again while waiting for another object (e.g. the Workspace of a Share).
pub const WAIT_FOR_DEPENDENCY: Duration = Duration::from_secs(30);

/// A Kubernetes Event the reconciler should publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventNote {
    pub warning: bool,
    /// PascalCase reason.
    pub reason: &'static str,
    /// PascalCase action.
    pub action: &'static str,
    pub note: String,
}

impl EventNote {
    pub fn normal(reason: &'static str, action: &'static str, note: impl Into<String>) -> EventNote {
        EventNote {
            warning: false,
            reason,
            action,
            note: note.into(),
        }
    }

    pub fn warning(reason: &'static str, action: &'static str, note: impl Into<String>) -> EventNote {
        EventNote {
            warning: true,
            reason,
            action,
            note: note.into(),
        }
    }
}

/// What a reconcile should do: store operations, the status to write, events, and when to
/// look again (`None`: only when the object changes).
#[derive(Debug, Clone, PartialEq)]
pub struct Plan<Op, Status> {
    pub ops: Vec<Op>,
    pub status: Status,
    pub events: Vec<EventNote>,
    pub requeue: Option<Duration>,
}

/// A spec problem the schema did not catch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

/// The Ready reason of the previous status, to emit events only on transitions.
pub(crate) fn previous_ready_reason(conditions: &[Condition]) -> Option<&str> {
    conditions::find(conditions, conditions::READY).map(|c| c.reason.as_str())
}

/// A warning event for an invalid spec, only when Ready was not already InvalidSpec.
pub(crate) fn invalid_spec_event(previous: &[Condition], err: &SpecError) -> Vec<EventNote> {
    if previous_ready_reason(previous) == Some(conditions::reason::INVALID_SPEC) {
        Vec::new()
    } else {
        vec![EventNote::warning(
            conditions::reason::INVALID_SPEC,
            "Validate",
            err.0.clone(),
        )]
    }
}

/// The conditions of an invalid spec.
pub(crate) fn invalid_spec_conditions(err: &SpecError) -> Vec<Desired> {
    vec![Desired::no(
        conditions::READY,
        conditions::reason::INVALID_SPEC,
        err.0.clone(),
    )]
}

/// Validates an absolute path inside a workspace with the store's own parser
/// ([`drive::model::WorkspacePath`]). Returns the canonical form.
pub fn canonical_path(path: &str) -> Result<String, SpecError> {
    if !path.starts_with('/') {
        return Err(SpecError(format!("path {path:?} must be absolute")));
    }
    drive::model::WorkspacePath::parse(path)
        .map(|p| p.to_string())
        .map_err(|e| SpecError(format!("path {path:?}: {e}")))
}

/// Validates a name that becomes a store name (DNS-1123 subdomain, at most 253 bytes).
pub fn store_name(name: &str) -> Result<(), SpecError> {
    drive::model::validate_workspace_name(name).map_err(|e| SpecError(format!("name {name:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_path_normalises_slashes_and_rejects_dot_dot_and_nul() {
        assert_eq!(canonical_path("/").as_deref(), Ok("/"));
        assert_eq!(canonical_path("//shots///sh010/").as_deref(), Ok("/shots/sh010"));
        assert!(canonical_path("shots").is_err());
        assert!(canonical_path("/a/../b").is_err());
        assert!(canonical_path("/a/\0b").is_err());
        assert!(canonical_path(&format!("/{}", "x".repeat(256))).is_err());
    }

    #[test]
    fn store_names_follow_dns_subdomain_rules() {
        assert!(store_name("studio-a.shot010").is_ok());
        for bad in ["", "Upper", "a/b", "a\0b", "-a", &"a".repeat(254)] {
            assert!(store_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
