//! Reconciles `Workspace` resources.
//!
//! An encrypted Workspace needs its key-encryption key only to be created: [`sync`] reads the
//! Secret named by `spec.encryption.keySecretRef` (through a [`KeySource`]) when the store has
//! no such workspace yet, and hands the key to the store, which wraps a new data key with it.

use std::sync::Arc;

use jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, ResourceExt};
use tracing::instrument;

use super::{
    Context, ReconcileError, action, failed_conditions, key_read_failure_conditions, object_key,
    patch_status_if_changed, publish,
};
use crate::crd::conditions;
use crate::crd::{FINALIZER, Workspace, WorkspaceStatus};
use crate::keys::{KeySource, SecretKeySource, SecretLookup, parse_kek};
use crate::plan::workspace::{Input, KeyState, Observed, Op, plan, plan_cleanup};
use crate::plan::{EventNote, Plan};
use crate::store::{StoreResult, StudioStore};
use drive::data::Kek;

fn input(ws: &Workspace) -> Result<Input<'_>, ReconcileError> {
    Ok(Input {
        namespace: ws
            .metadata
            .namespace
            .as_deref()
            .ok_or(ReconcileError::MissingField("namespace"))?,
        name: ws
            .metadata
            .name
            .as_deref()
            .ok_or(ReconcileError::MissingField("name"))?,
        generation: ws.metadata.generation.unwrap_or_default(),
        spec: &ws.spec,
        status: ws.status.as_ref(),
    })
}

/// Reads what the store holds for the workspace named in `input`. `key` is left
/// [`KeyState::NotLoaded`]; [`load_key`] fills it in.
pub async fn observe<S: StudioStore>(store: &S, input: &Input<'_>) -> StoreResult<Observed> {
    let Ok(name) = crate::plan::workspace::workspace_store_name(input.namespace, input.name) else {
        return Ok(Observed::default());
    };
    let record = store.get_workspace(&name).await?;
    let usage = match &record {
        Some(r) => Some(store.workspace_usage(r).await?),
        None => None,
    };
    Ok(Observed {
        record,
        usage,
        key: KeyState::NotLoaded,
    })
}

/// Reads the key-encryption key when the planner will need it: the spec asks for encryption
/// and the store has no workspace yet. Returns what the planner may know about it and, when
/// loaded, the key for [`apply`]. A Secret that cannot be read at all (forbidden, API down)
/// is an error, retried with backoff.
pub async fn load_key<K: KeySource>(
    keys: &K,
    input: &Input<'_>,
    observed: &Observed,
) -> Result<(KeyState, Option<Kek>), ReconcileError> {
    let Some(secret) = input
        .spec
        .encryption
        .as_ref()
        .filter(|e| e.enabled && observed.record.is_none())
        .and_then(|e| e.key_secret_ref.as_ref())
    else {
        return Ok((KeyState::NotLoaded, None));
    };
    let (ns, name, key) = (input.namespace, secret.name.as_str(), secret.key.as_str());
    Ok(match keys.lookup(ns, name, key).await? {
        SecretLookup::SecretMissing => (
            KeyState::Missing(format!("Secret {ns}/{name} does not exist")),
            None,
        ),
        SecretLookup::KeyMissing => (
            KeyState::Missing(format!("Secret {ns}/{name} has no key {key:?}")),
            None,
        ),
        SecretLookup::Found(material) => match parse_kek(material.as_bytes()) {
            Ok(kek) => (KeyState::Loaded, Some(kek)),
            Err(e) => (
                KeyState::Invalid(format!("key {key:?} of Secret {ns}/{name}: {e}")),
                None,
            ),
        },
    })
}

/// Applies store operations. `kek` is the key-encryption key for creating an encrypted
/// workspace (see [`load_key`]).
pub async fn apply<S: StudioStore>(store: &S, ops: &[Op], kek: Option<&Kek>) -> StoreResult<()> {
    for op in ops {
        match op {
            Op::Create(new) => drop(store.create_workspace(new, kek).await?),
            Op::Update { name, change } => drop(store.update_workspace(name, change).await?),
            Op::Delete { name } => drop(store.delete_workspace(name).await?),
        }
    }
    Ok(())
}

/// Store-only reconcile: plan and apply until the plan asks for nothing more. Returns the
/// final plan with the events of every round. `keys` is read only to create an encrypted
/// workspace.
pub async fn sync<S: StudioStore, K: KeySource>(
    store: &S,
    keys: &K,
    input: &Input<'_>,
    now: Timestamp,
) -> Result<Plan<Op, WorkspaceStatus>, ReconcileError> {
    let mut events: Vec<EventNote> = Vec::new();
    for _ in 0..super::MAX_ROUNDS {
        let mut observed = observe(store, input).await?;
        let (key, kek) = load_key(keys, input, &observed).await?;
        observed.key = key;
        let mut p = plan(input, &observed, now);
        events.append(&mut p.events);
        if p.ops.is_empty() {
            p.events = events;
            return Ok(p);
        }
        apply(store, &p.ops, kek.as_ref()).await?;
    }
    Err(ReconcileError::NoConvergence)
}

/// Store-only cleanup of a deleted Workspace: soft-delete with `Delete`, keep with `Retain`.
/// Fails (and the finalizer stays) while the store is unreachable.
pub async fn cleanup<S: StudioStore>(store: &S, input: &Input<'_>) -> Result<Vec<Op>, ReconcileError> {
    let observed = observe(store, input).await?;
    let ops = plan_cleanup(input, &observed);
    apply(store, &ops, None).await?;
    Ok(ops)
}

/// The controller's reconcile function for Workspaces.
#[instrument(skip_all, name = "reconcile.workspace", fields(object = %ws.name_any(), namespace = ws.namespace().unwrap_or_default()))]
pub async fn reconcile<S: StudioStore>(
    ws: Arc<Workspace>,
    ctx: Arc<Context<S>>,
) -> Result<Action, ReconcileError> {
    let namespace = ws.namespace().ok_or(ReconcileError::MissingField("namespace"))?;
    let api: Api<Workspace> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, ws, |event| async {
        match event {
            Finalizer::Apply(ws) => apply_live(&api, &ws, &ctx).await,
            Finalizer::Cleanup(ws) => {
                let ops = cleanup(&ctx.store, &input(&ws)?).await?;
                let note = if ops.is_empty() {
                    EventNote::normal(
                        "Retained",
                        "Delete",
                        "deletionPolicy Retain: the workspace data is kept",
                    )
                } else {
                    EventNote::normal(
                        "Deleted",
                        "Delete",
                        "the workspace was soft-deleted in the metadata store",
                    )
                };
                publish(&ctx.recorder, ws.as_ref(), &[note]).await;
                Ok(Action::await_change())
            }
        }
    })
    .await;
    result.map_err(|e| ReconcileError::Finalizer(Box::new(e)))
}

async fn apply_live<S: StudioStore>(
    api: &Api<Workspace>,
    ws: &Workspace,
    ctx: &Context<S>,
) -> Result<Action, ReconcileError> {
    let now = (ctx.clock)();
    let input = input(ws)?;
    let keys = SecretKeySource::new(ctx.client.clone());
    match sync(&ctx.store, &keys, &input, now).await {
        Ok(p) => {
            patch_status_if_changed(api, ws, ws.status.as_ref(), &p.status).await?;
            publish(&ctx.recorder, ws, &p.events).await;
            ctx.backoff.succeed(&object_key(ws));
            Ok(action(p.requeue))
        }
        Err(ReconcileError::Store(e)) => {
            let mut status = ws.status.clone().unwrap_or_default();
            status.observed_generation = Some(input.generation);
            status.conditions = failed_conditions(&status.conditions, &e, input.generation, now);
            patch_status_if_changed(api, ws, ws.status.as_ref(), &status).await?;
            Err(ReconcileError::Store(e))
        }
        Err(ReconcileError::KeySecret(e)) => {
            let mut status = ws.status.clone().unwrap_or_default();
            status.observed_generation = Some(input.generation);
            status.conditions = conditions::merge(
                &status.conditions,
                &key_read_failure_conditions(&e),
                input.generation,
                now,
            );
            patch_status_if_changed(api, ws, ws.status.as_ref(), &status).await?;
            Err(ReconcileError::KeySecret(e))
        }
        Err(other) => Err(other),
    }
}
