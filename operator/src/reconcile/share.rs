//! Reconciles `Share` resources.

use std::sync::Arc;

use jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, ResourceExt};
use tracing::instrument;

use super::{
    Context, ReconcileError, action, failed_conditions, object_key, patch_status_if_changed, publish,
};
use crate::crd::{FINALIZER, Share, ShareStatus};
use crate::plan::share::{Input, Observed, Op, desired_grant, plan, plan_cleanup};
use crate::plan::{EventNote, Plan};
use crate::store::{StoreResult, StudioStore};

fn input(s: &Share) -> Result<Input<'_>, ReconcileError> {
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

/// Reads the workspace and the grant from the store.
pub async fn observe<S: StudioStore>(store: &S, input: &Input<'_>) -> StoreResult<Observed> {
    let Ok((workspace, grant)) = desired_grant(input) else {
        return Ok(Observed::default());
    };
    let ws = store.get_workspace(&workspace).await?;
    let grant = match ws {
        Some(_) => store.get_share(&workspace, &grant.name).await?,
        None => None,
    };
    Ok(Observed { workspace: ws, grant })
}

/// Applies store operations.
pub async fn apply<S: StudioStore>(store: &S, ops: &[Op]) -> StoreResult<()> {
    for op in ops {
        match op {
            Op::Put { workspace, grant } => store.put_share(workspace, grant).await?,
            Op::Revoke { workspace, name } => drop(store.delete_share(workspace, name).await?),
        }
    }
    Ok(())
}

/// Store-only reconcile (see [`super::workspace::sync`]).
pub async fn sync<S: StudioStore>(
    store: &S,
    input: &Input<'_>,
    now: Timestamp,
) -> Result<Plan<Op, ShareStatus>, ReconcileError> {
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

/// Store-only cleanup: revoke the grant.
pub async fn cleanup<S: StudioStore>(store: &S, input: &Input<'_>) -> Result<Vec<Op>, ReconcileError> {
    let observed = observe(store, input).await?;
    let ops = plan_cleanup(input, &observed);
    apply(store, &ops).await?;
    Ok(ops)
}

/// The controller's reconcile function for Shares.
#[instrument(skip_all, name = "reconcile.share", fields(object = %share.name_any(), namespace = share.namespace().unwrap_or_default()))]
pub async fn reconcile<S: StudioStore>(
    share: Arc<Share>,
    ctx: Arc<Context<S>>,
) -> Result<Action, ReconcileError> {
    let namespace = share
        .namespace()
        .ok_or(ReconcileError::MissingField("namespace"))?;
    let api: Api<Share> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, share, |event| async {
        match event {
            Finalizer::Apply(share) => apply_live(&api, &share, &ctx).await,
            Finalizer::Cleanup(share) => {
                if !cleanup(&ctx.store, &input(&share)?).await?.is_empty() {
                    let note =
                        EventNote::normal("Revoked", "Delete", "the grant was revoked in the metadata store");
                    publish(&ctx.recorder, share.as_ref(), &[note]).await;
                }
                Ok(Action::await_change())
            }
        }
    })
    .await;
    result.map_err(|e| ReconcileError::Finalizer(Box::new(e)))
}

async fn apply_live<S: StudioStore>(
    api: &Api<Share>,
    share: &Share,
    ctx: &Context<S>,
) -> Result<Action, ReconcileError> {
    let now = (ctx.clock)();
    let input = input(share)?;
    match sync(&ctx.store, &input, now).await {
        Ok(p) => {
            patch_status_if_changed(api, share, share.status.as_ref(), &p.status).await?;
            publish(&ctx.recorder, share, &p.events).await;
            ctx.backoff.succeed(&object_key(share));
            Ok(action(p.requeue))
        }
        Err(ReconcileError::Store(e)) => {
            let mut status = share.status.clone().unwrap_or_default();
            status.observed_generation = Some(input.generation);
            status.conditions = failed_conditions(&status.conditions, &e, input.generation, now);
            patch_status_if_changed(api, share, share.status.as_ref(), &status).await?;
            Err(ReconcileError::Store(e))
        }
        Err(other) => Err(other),
    }
}
