//! Planner for `Workspace`: create the store workspace, adopt an existing one of the same
//! store name, update mutable fields (quota, owners), refuse immutable changes, report usage.
//!
//! An encrypted workspace is created only once its key-encryption key has been read from the
//! Secret its spec names ([`KeyState::Loaded`]); a missing Secret or a malformed key leaves it
//! uncreated with `Ready=False` (`KeySecretMissing` / `InvalidKey`) and a recheck in 30 s (the
//! operator does not watch Secrets). The key itself never reaches the planner: only whether it
//! was loaded, and messages that name the Secret.

use jiff::Timestamp;

use super::{
    EventNote, Plan, RESYNC, SpecError, WAIT_FOR_DEPENDENCY, invalid_spec_conditions, invalid_spec_event,
    previous_ready_reason, store_name,
};
use crate::crd::conditions::{self, Desired, reason};
use crate::crd::{DeletionPolicy, ObjectStoreRef, WorkspaceSpec, WorkspaceStatus, WorkspaceUsage};
use crate::store::{NewWorkspace, ObjectStoreLocation, Usage, WorkspaceChange, WorkspaceRecord};

/// The resource being planned.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub generation: i64,
    pub spec: &'a WorkspaceSpec,
    pub status: Option<&'a WorkspaceStatus>,
}

/// What the store holds for the workspace, and whether the key it needs was loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub record: Option<WorkspaceRecord>,
    pub usage: Option<Usage>,
    pub key: KeyState,
}

/// The key-encryption key of an encrypted workspace. The reconciler reads it only when the
/// workspace has to be created (afterwards the store holds the wrapped data key). Messages
/// name the Secret and key, never their content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum KeyState {
    /// Not read (not needed, or not looked up).
    #[default]
    NotLoaded,
    /// Read and valid; the reconciler holds it for the create.
    Loaded,
    /// The Secret, or the key in it, does not exist.
    Missing(String),
    /// The value is not a key-encryption key.
    Invalid(String),
}

/// A store operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Create(NewWorkspace),
    Update { name: String, change: WorkspaceChange },
    Delete { name: String },
}

/// The store name of a Workspace: `<namespace>.<name>`.
pub fn workspace_store_name(namespace: &str, name: &str) -> Result<String, SpecError> {
    if namespace.is_empty() || namespace.contains('.') {
        return Err(SpecError(format!(
            "namespace {namespace:?} cannot prefix a store name"
        )));
    }
    let full = format!("{namespace}.{name}");
    store_name(&full)?;
    Ok(full)
}

fn validate(input: &Input<'_>) -> Result<NewWorkspace, SpecError> {
    let name = workspace_store_name(input.namespace, input.name)?;
    let spec = input.spec;
    if !(1 << 20..=64 << 20).contains(&spec.block_size_bytes) {
        return Err(SpecError(format!(
            "blockSizeBytes {} is outside 1 MiB..=64 MiB",
            spec.block_size_bytes
        )));
    }
    let encrypted = spec.encryption.as_ref().is_some_and(|e| e.enabled);
    if encrypted
        && spec
            .encryption
            .as_ref()
            .is_some_and(|e| e.key_secret_ref.is_none())
    {
        return Err(SpecError("encryption.enabled needs keySecretRef".into()));
    }
    if spec.quota_bytes == Some(0) {
        return Err(SpecError("quotaBytes must be positive".into()));
    }
    if let Some(owner) = spec.owners.iter().find(|o| o.is_empty() || o.contains('\0')) {
        return Err(SpecError(format!("owner {owner:?} is not a valid subject")));
    }
    Ok(NewWorkspace {
        name,
        kind: spec.kind,
        block_size: spec.block_size_bytes,
        encrypted,
        quota_bytes: spec.quota_bytes,
        owners: spec.owners.clone(),
        object_store: spec.object_store.as_ref().map(object_store_location),
    })
}

/// The location the store records for `spec.objectStore`: bucket, prefix (without leading or
/// trailing '/'), endpoint and region. The credentials Secret is not recorded: mounts get
/// credentials from their publish secrets.
fn object_store_location(store: &ObjectStoreRef) -> ObjectStoreLocation {
    ObjectStoreLocation {
        bucket: store.bucket.clone(),
        prefix: store.prefix.trim_matches('/').to_string(),
        endpoint: store.endpoint.clone(),
        region: store.region.clone(),
    }
}

/// Immutable fields that differ between the store and the spec.
fn immutable_drift(want: &NewWorkspace, have: &WorkspaceRecord) -> Option<SpecError> {
    let mut diffs = Vec::new();
    if want.kind != have.kind {
        diffs.push(format!(
            "kind is {:?} in the store, {:?} in the spec",
            have.kind, want.kind
        ));
    }
    if want.block_size != have.block_size {
        diffs.push(format!(
            "blockSizeBytes is {} in the store, {} in the spec",
            have.block_size, want.block_size
        ));
    }
    if want.object_store != have.object_store {
        diffs.push("objectStore differs from the location recorded at creation".to_string());
    }
    if want.encrypted != have.encrypted {
        diffs.push(format!(
            "encryption is {} in the store",
            if have.encrypted { "on" } else { "off" }
        ));
    }
    (!diffs.is_empty()).then(|| SpecError(format!("immutable fields differ: {}", diffs.join("; "))))
}

fn status(
    input: &Input<'_>,
    record: Option<&WorkspaceRecord>,
    usage: Option<Usage>,
    desired: &[Desired],
    now: Timestamp,
) -> WorkspaceStatus {
    let previous = input.status.map(|s| s.conditions.as_slice()).unwrap_or_default();
    WorkspaceStatus {
        observed_generation: Some(input.generation),
        workspace_id: record.map(|r| r.id.clone()),
        workspace_name: record.map(|r| r.name.clone()),
        usage: usage.map(|u| WorkspaceUsage {
            files: u.files,
            directories: u.directories,
            bytes: u.bytes,
        }),
        conditions: conditions::merge(previous, desired, input.generation, now),
    }
}

/// The Ready reason and message when the key of an encrypted workspace to create is not
/// usable; `None` when it was loaded.
fn key_blocked(key: &KeyState) -> Option<(&'static str, String)> {
    match key {
        KeyState::Loaded => None,
        KeyState::NotLoaded => Some((
            reason::KEY_SECRET_MISSING,
            "waiting for the key-encryption key of this encrypted workspace".to_string(),
        )),
        KeyState::Missing(m) => Some((
            reason::KEY_SECRET_MISSING,
            format!("{m}; the workspace is created once it exists"),
        )),
        KeyState::Invalid(m) => Some((
            reason::INVALID_KEY,
            format!("{m}; the workspace is created once it is fixed"),
        )),
    }
}

/// Plans one reconcile of a live (not deleting) Workspace.
pub fn plan(input: &Input<'_>, observed: &Observed, now: Timestamp) -> Plan<Op, WorkspaceStatus> {
    let previous = input.status.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let want = match validate(input) {
        Ok(want) => want,
        Err(err) => {
            return Plan {
                ops: Vec::new(),
                status: status(
                    input,
                    observed.record.as_ref(),
                    observed.usage,
                    &invalid_spec_conditions(&err),
                    now,
                ),
                events: invalid_spec_event(previous, &err),
                requeue: None,
            };
        }
    };
    let Some(have) = &observed.record else {
        if want.encrypted
            && let Some((why, message)) = key_blocked(&observed.key)
        {
            let events = if previous_ready_reason(previous) == Some(why) {
                Vec::new()
            } else {
                vec![EventNote::warning(why, "LoadKey", message.clone())]
            };
            let desired = [Desired::no(conditions::READY, why, message)];
            return Plan {
                ops: Vec::new(),
                status: status(input, None, None, &desired, now),
                events,
                requeue: Some(WAIT_FOR_DEPENDENCY),
            };
        }
        let desired = [
            Desired::no(
                conditions::READY,
                reason::CREATING,
                format!("creating workspace {}", want.name),
            ),
            Desired::yes(
                conditions::PROGRESSING,
                reason::CREATING,
                "creating the workspace in the metadata store",
            ),
        ];
        let note = format!("created workspace {} in the metadata store", want.name);
        return Plan {
            ops: vec![Op::Create(want)],
            status: status(input, None, None, &desired, now),
            events: vec![EventNote::normal("Created", "Create", note)],
            requeue: Some(std::time::Duration::ZERO),
        };
    };
    if let Some(err) = immutable_drift(&want, have) {
        return Plan {
            ops: Vec::new(),
            status: status(
                input,
                Some(have),
                observed.usage,
                &invalid_spec_conditions(&err),
                now,
            ),
            events: invalid_spec_event(previous, &err),
            requeue: None,
        };
    }
    let change = WorkspaceChange {
        quota_bytes: (want.quota_bytes != have.quota_bytes).then_some(want.quota_bytes),
        owners: (want.owners != have.owners).then(|| want.owners.clone()),
    };
    if change != WorkspaceChange::default() {
        let desired = [
            Desired::yes(
                conditions::READY,
                reason::RECONCILED,
                "workspace exists; applying changes",
            ),
            Desired::yes(
                conditions::PROGRESSING,
                reason::RECONCILED,
                "updating quota or owners",
            ),
        ];
        return Plan {
            ops: vec![Op::Update {
                name: want.name.clone(),
                change,
            }],
            status: status(input, Some(have), observed.usage, &desired, now),
            events: vec![EventNote::normal(
                "Updated",
                "Update",
                format!("updated workspace {}", want.name),
            )],
            requeue: Some(std::time::Duration::ZERO),
        };
    }
    let message = match input.spec.deletion_policy {
        DeletionPolicy::Retain => "workspace is in sync; deleting the resource keeps its data",
        DeletionPolicy::Delete => "workspace is in sync; deleting the resource soft-deletes its data",
    };
    let desired = [Desired::yes(conditions::READY, reason::RECONCILED, message)];
    let mut events = Vec::new();
    if previous_ready_reason(previous) != Some(reason::RECONCILED) && !previous.is_empty() {
        events.push(EventNote::normal(
            reason::RECONCILED,
            "Reconcile",
            format!("workspace {} is ready", want.name),
        ));
    }
    Plan {
        ops: Vec::new(),
        status: status(input, Some(have), observed.usage, &desired, now),
        events,
        requeue: Some(RESYNC),
    }
}

/// Plans cleanup of a Workspace being deleted: soft-delete with `Delete`, nothing with
/// `Retain` or when the store has no such workspace.
pub fn plan_cleanup(input: &Input<'_>, observed: &Observed) -> Vec<Op> {
    match (&observed.record, input.spec.deletion_policy) {
        (Some(record), DeletionPolicy::Delete) => vec![Op::Delete {
            name: record.name.clone(),
        }],
        _ => Vec::new(),
    }
}
