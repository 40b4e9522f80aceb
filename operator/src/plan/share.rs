//! Planner for `Share`: keep the store's grant equal to the spec until `expiresAt`, then
//! revoke it and mark the Share expired.

use std::time::Duration;

use jiff::Timestamp;

use super::{
    EventNote, Plan, RESYNC, SpecError, WAIT_FOR_DEPENDENCY, canonical_path, invalid_spec_conditions,
    invalid_spec_event, previous_ready_reason, store_name,
};
use crate::crd::conditions::{self, Desired, reason};
use crate::crd::{ShareSpec, ShareStatus};
use crate::plan::workspace::workspace_store_name;
use crate::store::{ShareGrant, WorkspaceRecord};

/// The resource being planned.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub generation: i64,
    pub spec: &'a ShareSpec,
    pub status: Option<&'a ShareStatus>,
}

/// What the store holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub workspace: Option<WorkspaceRecord>,
    pub grant: Option<ShareGrant>,
}

/// A store operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put { workspace: String, grant: ShareGrant },
    Revoke { workspace: String, name: String },
}

/// The workspace store name and the grant a Share asks for.
pub fn desired_grant(input: &Input<'_>) -> Result<(String, ShareGrant), SpecError> {
    let workspace = workspace_store_name(input.namespace, &input.spec.workspace)?;
    store_name(input.name)?;
    let path = canonical_path(&input.spec.path)?;
    if input.spec.subjects.is_empty() {
        return Err(SpecError("a Share needs at least one subject".into()));
    }
    let mut subjects = Vec::with_capacity(input.spec.subjects.len());
    for s in &input.spec.subjects {
        if s.name.is_empty() || s.name.contains('\0') {
            return Err(SpecError(format!("subject name {:?} is invalid", s.name)));
        }
        subjects.push(s.to_store_subject(input.namespace));
    }
    subjects.sort();
    subjects.dedup();
    let grant = ShareGrant {
        name: input.name.to_string(),
        path,
        subjects,
        permission: input.spec.permission,
        expires_at: input.spec.expires_at.as_ref().map(|t| t.0),
    };
    Ok((workspace, grant))
}

fn status_from(input: &Input<'_>, expired: bool, desired: &[Desired], now: Timestamp) -> ShareStatus {
    let previous = input.status.map(|s| s.conditions.as_slice()).unwrap_or_default();
    ShareStatus {
        observed_generation: Some(input.generation),
        expired,
        conditions: conditions::merge(previous, desired, input.generation, now),
    }
}

/// Plans one reconcile of a live Share.
pub fn plan(input: &Input<'_>, observed: &Observed, now: Timestamp) -> Plan<Op, ShareStatus> {
    let previous = input.status.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let (workspace, grant) = match desired_grant(input) {
        Ok(d) => d,
        Err(err) => {
            return Plan {
                ops: Vec::new(),
                status: status_from(input, false, &invalid_spec_conditions(&err), now),
                events: invalid_spec_event(previous, &err),
                requeue: None,
            };
        }
    };
    if let Some(expiry) = grant.expires_at
        && expiry <= now
    {
        let desired = [Desired::no(
            conditions::READY,
            reason::EXPIRED,
            format!("the grant expired at {expiry}"),
        )];
        let ops = match &observed.grant {
            Some(_) => vec![Op::Revoke {
                workspace,
                name: grant.name.clone(),
            }],
            None => Vec::new(),
        };
        let events = if previous_ready_reason(previous) == Some(reason::EXPIRED) {
            Vec::new()
        } else {
            vec![EventNote::normal(
                reason::EXPIRED,
                "Revoke",
                format!("revoked: the grant expired at {expiry}"),
            )]
        };
        return Plan {
            ops,
            status: status_from(input, true, &desired, now),
            events,
            requeue: None,
        };
    }
    if observed.workspace.is_none() {
        let desired = [Desired::no(
            conditions::READY,
            reason::WORKSPACE_NOT_FOUND,
            format!("workspace {workspace} does not exist in the metadata store"),
        )];
        return Plan {
            ops: Vec::new(),
            status: status_from(input, false, &desired, now),
            events: Vec::new(),
            requeue: Some(WAIT_FOR_DEPENDENCY),
        };
    }
    // Wake up at expiry, but never sleep longer than the resync period.
    let requeue = grant
        .expires_at
        .and_then(|t| Duration::try_from(t.duration_since(now)).ok())
        .map_or(RESYNC, |d| d.min(RESYNC));
    if observed.grant.as_ref() != Some(&grant) {
        let desired = [Desired::no(
            conditions::READY,
            reason::CREATING,
            "recording the grant",
        )];
        let note = format!(
            "granted {} on {workspace}:{} to {}",
            permission_word(&grant),
            grant.path,
            grant.subjects.join(", ")
        );
        return Plan {
            ops: vec![Op::Put { workspace, grant }],
            status: status_from(input, false, &desired, now),
            events: vec![EventNote::normal("Granted", "Grant", note)],
            requeue: Some(Duration::ZERO),
        };
    }
    let desired = [Desired::yes(
        conditions::READY,
        reason::RECONCILED,
        "the grant is recorded",
    )];
    Plan {
        ops: Vec::new(),
        status: status_from(input, false, &desired, now),
        events: Vec::new(),
        requeue: Some(requeue),
    }
}

fn permission_word(grant: &ShareGrant) -> &'static str {
    match grant.permission {
        crate::crd::Permission::Read => "read",
        crate::crd::Permission::Write => "write",
        crate::crd::Permission::Admin => "admin",
    }
}

/// Plans cleanup of a Share being deleted: revoke its grant when the store has it.
pub fn plan_cleanup(input: &Input<'_>, observed: &Observed) -> Vec<Op> {
    match (desired_grant(input), &observed.grant) {
        (Ok((workspace, grant)), Some(_)) => vec![Op::Revoke {
            workspace,
            name: grant.name,
        }],
        _ => Vec::new(),
    }
}
