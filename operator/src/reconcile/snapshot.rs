//! Reconciles `Snapshot` resources.

use std::sync::Arc;

use jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, ResourceExt};
use tracing::instrument;

use super::{
    Context, ReconcileError, action, failed_conditions, object_key, patch_status_if_changed, publish,
};
use crate::crd::{FINALIZER, Snapshot, SnapshotStatus};
use crate::plan::snapshot::{Input, Observed, Op, plan, plan_cleanup, targets};
use crate::plan::{EventNote, Plan};
use crate::store::{StoreResult, StudioStore};

fn input(s: &Snapshot) -> Result<Input<'_>, ReconcileError> {
    Ok(Input {
        namespace: s
            .metadata
            .namespace
            .as_deref()
            .ok_or(ReconcileError::MissingField("namespace"))?,
        name: s
            .metadata
            .name
            .as_deref()
            .ok_or(ReconcileError::MissingField("name"))?,
        generation: s.metadata.generation.unwrap_or_default(),
        spec: &s.spec,
        status: s.status.as_ref(),
    })
}

/// Reads the workspace and the snapshot from the store.
pub async fn observe<S: StudioStore>(store: &S, input: &Input<'_>) -> StoreResult<Observed> {
    let Ok((workspace, name, _)) = targets(input) else {
        return Ok(Observed::default());
    };
    let ws = store.get_workspace(&workspace).await?;
    let snapshot = match ws {
        Some(_) => store.get_snapshot(&workspace, &name).await?,
        None => None,
    };
    Ok(Observed {
        workspace: ws,
        snapshot,
    })
}

/// Applies store operations.
pub async fn apply<S: StudioStore>(store: &S, ops: &[Op]) -> StoreResult<()> {
    for op in ops {
        match op {
            Op::Create {
                workspace,
                name,
                path,
            } => drop(store.create_snapshot(workspace, name, path).await?),
            Op::Delete { workspace, name } => drop(store.delete_snapshot(workspace, name).await?),
        }
    }
    Ok(())
}

/// Store-only reconcile (see [`super::workspace::sync`]).
pub async fn sync<S: StudioStore>(
    store: &S,
    input: &Input<'_>,
    now: Timestamp,
) -> Result<Plan<Op, SnapshotStatus>, ReconcileError> {
    let mut events: Vec<EventNote> = Vec::new();
    for _ in 0..super::MAX_ROUNDS {
        let observed = observe(store, input).await?;
        let mut p = plan(input, &observed, now);
        events.append(&mut p.events);
        if p.ops.is_empty() {
            p.events = events;
            return Ok(p);
        }
        apply(store, &p.ops).await?;
    }
    Err(ReconcileError::NoConvergence)
}

/// Store-only cleanup: release the snapshot.
pub async fn cleanup<S: StudioStore>(store: &S, input: &Input<'_>) -> Result<Vec<Op>, ReconcileError> {
    let observed = observe(store, input).await?;
    let ops = plan_cleanup(input, &observed);
    apply(store, &ops).await?;
    Ok(ops)
}

/// The controller's reconcile function for Snapshots.
#[instrument(skip_all, name = "reconcile.snapshot", fields(object = %snap.name_any(), namespace = snap.namespace().unwrap_or_default()))]
pub async fn reconcile<S: StudioStore>(
    snap: Arc<Snapshot>,
    ctx: Arc<Context<S>>,
) -> Result<Action, ReconcileError> {
    let namespace = snap
        .namespace()
        .ok_or(ReconcileError::MissingField("namespace"))?;
    let api: Api<Snapshot> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, snap, |event| async {
        match event {
            Finalizer::Apply(snap) => apply_live(&api, &snap, &ctx).await,
            Finalizer::Cleanup(snap) => {
                if !cleanup(&ctx.store, &input(&snap)?).await?.is_empty() {
                    let note = EventNote::normal(
                        "Released",
                        "Delete",
                        "the snapshot was released in the metadata store",
                    );
                    publish(&ctx.recorder, snap.as_ref(), &[note]).await;
                }
                Ok(Action::await_change())
            }
        }
    })
    .await;
    result.map_err(|e| ReconcileError::Finalizer(Box::new(e)))
}

async fn apply_live<S: StudioStore>(
    api: &Api<Snapshot>,
    snap: &Snapshot,
    ctx: &Context<S>,
) -> Result<Action, ReconcileError> {
    let now = (ctx.clock)();
    let input = input(snap)?;
    match sync(&ctx.store, &input, now).await {
        Ok(p) => {
            patch_status_if_changed(api, snap, snap.status.as_ref(), &p.status).await?;
            publish(&ctx.recorder, snap, &p.events).await;
            ctx.backoff.succeed(&object_key(snap));
            Ok(action(p.requeue))
        }
        Err(ReconcileError::Store(e)) => {
            let mut status = snap.status.clone().unwrap_or_default();
            status.observed_generation = Some(input.generation);
            status.conditions = failed_conditions(&status.conditions, &e, input.generation, now);
            patch_status_if_changed(api, snap, snap.status.as_ref(), &status).await?;
            Err(ReconcileError::Store(e))
        }
        Err(other) => Err(other),
    }
}
