//! The observe-plan-apply driver, written once for every kind.
//!
//! A kind supplies only its own parts through [`Kind`]: how to build the planner's input from
//! the resource, what to observe, how to apply one plan's ops, which planner to call, and what
//! to say when cleanup is done. [`LiveKind`] adds how to build the kind from the controllers'
//! [`Context`] and which API the resource lives in.
//!
//! The driver owns the rest:
//! - [`sync`]: the store-only loop (observe -> plan -> apply -> observe -> plan ... until the
//!   plan has no ops, at most `MAX_ROUNDS`), collecting the events of every round. The
//!   real-PostgreSQL tests drive it directly.
//! - [`cleanup`]: observe, plan the cleanup, apply it.
//! - [`reconcile`]: the controllers' reconcile function. It wraps `sync` in kube's
//!   `finalizer()` (for kinds that have one), patches the status when it changed, publishes
//!   events and resets the backoff; on a store or key-Secret failure, or the store's refusal
//!   of a DataStore change, it records the failure in the status conditions before returning
//!   the error (which the error policy retries with backoff).
//!
//! The kinds' futures are boxed where the driver awaits them: otherwise the compiler cannot
//! prove the controllers' futures `Send` (rust-lang/rust#100013, a higher-ranked lifetime
//! limitation with the borrowed `Kind::Input<'_>`).

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use futures::FutureExt as _;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::core::object::HasStatus;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument as _;

use super::{
    Context, MAX_ROUNDS, ReconcileError, action, failure_conditions, key_read_failure_conditions, object_key,
    patch_status_if_changed, publish, refusal_conditions,
};
use crate::crd::FINALIZER;
use crate::crd::conditions;
use crate::plan::{EventNote, Plan};
use crate::store::StudioStore;

/// One kind's parts of the driver. The value carries the ports the kind needs besides the
/// store (the Workspace's key source, the LifecyclePolicy's Jobs API); for Snapshot and Share
/// it is a unit struct.
pub trait Kind: Send + Sync {
    /// The custom resource.
    type Resource: Resource<DynamicType = ()>
        + HasStatus<Status = Self::Status>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static;
    /// The status the planner computes.
    type Status: StatusFields;
    /// The planner's view of the resource, borrowed from it.
    type Input<'a>: Send + Sync;
    /// What the planner knows about the world.
    type Observed: Send + Sync;
    /// One change the planner asks for.
    type Op: Send + Sync;
    /// What [`Kind::load`] hands to [`Kind::apply`] besides the ops (the Workspace's
    /// key-encryption key); `Default` is "nothing loaded", which cleanup uses.
    type Loaded: Default + Send + Sync;

    /// Whether the resource carries the cleanup finalizer (false: no cleanup on deletion).
    const FINALIZER: bool = true;
    /// Whether to observe and plan again after applying ops. False when the plan's status
    /// already records what the ops did, and the next reconcile observes the result.
    const REPLAN: bool = true;

    /// The planner's input. `now` stands in for timestamps the object does not have yet.
    fn input(obj: &Self::Resource, now: Timestamp) -> Result<Self::Input<'_>, ReconcileError>;

    /// Reads what the planner needs to know.
    fn observe<S: StudioStore>(
        &self,
        store: &S,
        input: &Self::Input<'_>,
    ) -> impl Future<Output = Result<Self::Observed, ReconcileError>> + Send;

    /// Loads, after observing and before planning, what only a sync needs (never cleanup).
    fn load(
        &self,
        _input: &Self::Input<'_>,
        _observed: &mut Self::Observed,
    ) -> impl Future<Output = Result<Self::Loaded, ReconcileError>> + Send {
        async { Ok(Self::Loaded::default()) }
    }

    /// The planner.
    fn plan(
        input: &Self::Input<'_>,
        observed: &Self::Observed,
        now: Timestamp,
    ) -> Plan<Self::Op, Self::Status>;

    /// Applies the ops of one plan, in order.
    fn apply<S: StudioStore>(
        &self,
        store: &S,
        ops: &[Self::Op],
        loaded: &Self::Loaded,
    ) -> impl Future<Output = Result<(), ReconcileError>> + Send;

    /// Cleanup decided from the resource alone, without reading the store (`None`: observe
    /// and call [`Kind::plan_cleanup`]). Lets a deletion that changes nothing in the store
    /// (a MediaDataStore with `Retain`) finish while the store is down.
    fn cleanup_without_store(_input: &Self::Input<'_>) -> Option<Vec<Self::Op>> {
        None
    }

    /// The cleanup planner (only called for kinds with a [`Kind::FINALIZER`]).
    fn plan_cleanup(_input: &Self::Input<'_>, _observed: &Self::Observed) -> Vec<Self::Op> {
        Vec::new()
    }

    /// The event to publish after a cleanup that applied `ops`, if any.
    fn cleanup_note(_ops: &[Self::Op]) -> Option<EventNote> {
        None
    }
}

/// The parts a kind adds for the controllers.
pub trait LiveKind: Kind + Sized {
    /// The kind with live ports, for reconciling `obj`.
    fn live<S: StudioStore>(ctx: &Context<S>, obj: &Arc<Self::Resource>) -> Self;

    /// The API the resource lives in.
    fn api(client: kube::Client, obj: &Self::Resource) -> Result<Api<Self::Resource>, ReconcileError>;
}

/// The status fields the driver writes itself when a reconcile fails.
pub trait StatusFields: Serialize + PartialEq + Clone + Default + Send + Sync {
    fn observed_generation_mut(&mut self) -> &mut Option<i64>;
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
}

/// Store-only reconcile: observe, plan and apply until the plan asks for nothing more.
/// Returns the final plan with the events of every round.
pub async fn sync<K: Kind, S: StudioStore>(
    kind: &K,
    store: &S,
    input: &K::Input<'_>,
    now: Timestamp,
) -> Result<Plan<K::Op, K::Status>, ReconcileError> {
    let mut events: Vec<EventNote> = Vec::new();
    for _ in 0..MAX_ROUNDS {
        let mut observed = kind.observe(store, input).boxed().await?;
        let loaded = kind.load(input, &mut observed).boxed().await?;
        let mut p = K::plan(input, &observed, now);
        events.append(&mut p.events);
        if !p.ops.is_empty() {
            kind.apply(store, &p.ops, &loaded).boxed().await?;
        }
        if p.ops.is_empty() || !K::REPLAN {
            p.events = events;
            return Ok(p);
        }
    }
    Err(ReconcileError::NoConvergence)
}

/// Store-only cleanup of a deleted resource. Returns the ops it applied. Fails (and the
/// finalizer stays) while the store is unreachable, unless the kind decides its cleanup
/// without the store ([`Kind::cleanup_without_store`]) and it has nothing to change there.
pub async fn cleanup<K: Kind, S: StudioStore>(
    kind: &K,
    store: &S,
    input: &K::Input<'_>,
) -> Result<Vec<K::Op>, ReconcileError> {
    let ops = match K::cleanup_without_store(input) {
        Some(ops) => ops,
        None => {
            let observed = kind.observe(store, input).boxed().await?;
            K::plan_cleanup(input, &observed)
        }
    };
    kind.apply(store, &ops, &K::Loaded::default()).boxed().await?;
    Ok(ops)
}

/// The controllers' reconcile function for kind `K`.
pub async fn reconcile<K: LiveKind, S: StudioStore>(
    obj: Arc<K::Resource>,
    ctx: Arc<Context<S>>,
) -> Result<Action, ReconcileError> {
    let span = tracing::info_span!(
        "reconcile",
        kind = %K::Resource::kind(&()),
        object = %obj.name_any(),
        namespace = obj.namespace().unwrap_or_default(),
    );
    async move {
        let api = K::api(ctx.client.clone(), &obj)?;
        let kind = K::live(&ctx, &obj);
        if !K::FINALIZER {
            return apply_live(&kind, &api, &obj, &ctx).await;
        }
        let result = finalizer(&api, FINALIZER, obj, |event| async {
            match event {
                Finalizer::Apply(obj) => apply_live(&kind, &api, &obj, &ctx).await,
                Finalizer::Cleanup(obj) => {
                    let input = K::input(&obj, (ctx.clock)())?;
                    let ops = cleanup(&kind, &ctx.store, &input).await?;
                    if let Some(note) = K::cleanup_note(&ops) {
                        publish(&ctx.recorder, obj.as_ref(), &[note]).await;
                    }
                    Ok(Action::await_change())
                }
            }
        })
        .await;
        result.map_err(|e| ReconcileError::Finalizer(Box::new(e)))
    }
    .instrument(span)
    .await
}

/// Syncs, then writes the outcome to the cluster: the status (or, on a store or key-Secret
/// failure, the failure conditions), the events and the backoff.
async fn apply_live<K: Kind, S: StudioStore>(
    kind: &K,
    api: &Api<K::Resource>,
    obj: &K::Resource,
    ctx: &Context<S>,
) -> Result<Action, ReconcileError> {
    let now = (ctx.clock)();
    let input = K::input(obj, now)?;
    let error = match sync(kind, &ctx.store, &input, now).await {
        Ok(p) => {
            patch_status_if_changed(api, obj, obj.status(), &p.status).await?;
            publish(&ctx.recorder, obj, &p.events).await;
            ctx.backoff.succeed(&object_key(obj));
            return Ok(action(p.requeue));
        }
        Err(e) => e,
    };
    let failure = match &error {
        ReconcileError::Store(e) => failure_conditions(e),
        ReconcileError::KeySecret(e) => key_read_failure_conditions(e),
        ReconcileError::DataStoreRefused(r) => refusal_conditions(r),
        _ => return Err(error),
    };
    let generation = obj.meta().generation.unwrap_or_default();
    let mut status = obj.status().cloned().unwrap_or_default();
    *status.observed_generation_mut() = Some(generation);
    let before = conditions::find(status.conditions_mut(), conditions::READY).map(|c| c.reason.clone());
    let merged = conditions::merge(status.conditions_mut(), &failure, generation, now);
    *status.conditions_mut() = merged;
    patch_status_if_changed(api, obj, obj.status(), &status).await?;
    // A refusal needs someone to change the spec: a warning when it starts, not every retry.
    if let ReconcileError::DataStoreRefused(r) = &error
        && let Some(ready) = failure.iter().find(|d| d.type_ == conditions::READY)
        && before.as_deref() != Some(ready.reason)
    {
        let note = EventNote::warning(ready.reason, "Update", r.to_string());
        publish(&ctx.recorder, obj, &[note]).await;
    }
    Err(error)
}

/// Namespace and name of a namespaced resource.
pub(crate) fn namespaced_names<R: Resource>(obj: &R) -> Result<(&str, &str), ReconcileError> {
    let meta = obj.meta();
    Ok((
        meta.namespace
            .as_deref()
            .ok_or(ReconcileError::MissingField("namespace"))?,
        meta.name.as_deref().ok_or(ReconcileError::MissingField("name"))?,
    ))
}

/// The API of a namespaced resource, in its namespace.
pub(crate) fn namespaced_api<R>(client: kube::Client, obj: &R) -> Result<Api<R>, ReconcileError>
where
    R: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    let namespace = obj
        .meta()
        .namespace
        .as_deref()
        .ok_or(ReconcileError::MissingField("namespace"))?;
    Ok(Api::namespaced(client, namespace))
}
