//! Controller wiring: one kube-runtime `Controller` per kind, metrics around every reconcile,
//! and the leader-election gate (kube-lease-manager) that runs the controllers only while this
//! replica holds the Lease, so two replicas never act at once.
//!
//! Status writes do not cause reconcile loops: a reconcile patches status only when it
//! changed, so the watch event of our own write leads to a no-op reconcile and stops there.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::batch::v1::Job;
use kube::Api;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::watcher;
use kube_lease_manager::LeaseManagerBuilder;
use tokio_util::sync::CancellationToken;

use crate::crd::{EventSink, LifecyclePolicy, MediaDataStore, Preload, Share, Snapshot, Workspace};
use crate::reconcile::{
    Context, EventSinks, LifecyclePolicies, MediaDataStores, Preloads, ReconcileError, Shares, Snapshots,
    Workspaces, error_policy, reconcile,
};
use crate::store::StudioStore;

/// Errors of the controller runtime.
#[derive(Debug, thiserror::Error)]
pub enum ControllersError {
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    #[error("the leader-election task stopped")]
    LeaseTaskStopped,
}

/// The Lease that elects the active replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// Lease duration in seconds.
    pub duration_secs: u64,
}

async fn timed<K, S, F, Fut>(
    kind: &'static str,
    obj: Arc<K>,
    ctx: Arc<Context<S>>,
    f: F,
) -> Result<Action, ReconcileError>
where
    F: FnOnce(Arc<K>, Arc<Context<S>>) -> Fut,
    Fut: Future<Output = Result<Action, ReconcileError>>,
{
    let start = Instant::now();
    let result = f(obj, ctx.clone()).await;
    ctx.metrics.observe(
        kind,
        start.elapsed().as_secs_f64(),
        result.as_ref().err().map(ReconcileError::label),
    );
    result
}

fn drain<T, E: std::fmt::Debug, S: futures::Stream<Item = Result<T, E>>>(
    stream: S,
) -> impl Future<Output = ()> {
    stream.for_each(|result| async move {
        if let Err(e) = result {
            tracing::debug!(error = ?e, "controller stream item failed");
        }
    })
}

/// Runs the seven controllers until `shutdown` is cancelled (then finishes in-flight
/// reconciles and returns).
pub async fn run_controllers<S: StudioStore>(ctx: Arc<Context<S>>, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    let config = ControllerConfig::default().concurrency(8);
    let stop = || {
        let token = shutdown.clone();
        async move { token.cancelled().await }
    };

    let workspaces = Controller::new(Api::<Workspace>::all(client.clone()), watcher::Config::default())
        .with_config(config.clone())
        .graceful_shutdown_on(stop());
    let snapshots = Controller::new(Api::<Snapshot>::all(client.clone()), watcher::Config::default())
        .with_config(config.clone())
        .graceful_shutdown_on(stop());
    let shares = Controller::new(Api::<Share>::all(client.clone()), watcher::Config::default())
        .with_config(config.clone())
        .graceful_shutdown_on(stop());
    let sinks = Controller::new(Api::<EventSink>::all(client.clone()), watcher::Config::default())
        .with_config(config.clone())
        .graceful_shutdown_on(stop());
    let preloads = Controller::new(Api::<Preload>::all(client.clone()), watcher::Config::default())
        .with_config(config.clone())
        .graceful_shutdown_on(stop());
    let datastores = Controller::new(
        Api::<MediaDataStore>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(config.clone())
    .graceful_shutdown_on(stop());
    let policies = Controller::new(
        Api::<LifecyclePolicy>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(
        Api::<Job>::namespaced(client.clone(), &ctx.gc.namespace),
        watcher::Config::default(),
    )
    .with_config(config)
    .graceful_shutdown_on(stop());

    let gauges = {
        let (ws, sn, sh, lp, es, pl, md) = (
            workspaces.store(),
            snapshots.store(),
            shares.store(),
            policies.store(),
            sinks.store(),
            preloads.store(),
            datastores.store(),
        );
        let (metrics, token) = (ctx.metrics.clone(), shutdown.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(15));
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    _ = tick.tick() => {
                        let counts = [ws.state().len(), sn.state().len(), sh.state().len(), lp.state().len(), es.state().len(), pl.state().len(), md.state().len()];
                        for (kind, n) in crate::metrics::KINDS.into_iter().zip(counts) {
                            metrics.objects.with_label_values(&[kind]).set(i64::try_from(n).unwrap_or(i64::MAX));
                        }
                    }
                }
            }
        }
    };

    tokio::join!(
        drain(workspaces.run(
            |o, c| timed("Workspace", o, c, reconcile::<Workspaces, _>),
            error_policy,
            ctx.clone()
        )),
        drain(snapshots.run(
            |o, c| timed("Snapshot", o, c, reconcile::<Snapshots, _>),
            error_policy,
            ctx.clone()
        )),
        drain(shares.run(
            |o, c| timed("Share", o, c, reconcile::<Shares, _>),
            error_policy,
            ctx.clone()
        )),
        drain(sinks.run(
            |o, c| timed("EventSink", o, c, reconcile::<EventSinks, _>),
            error_policy,
            ctx.clone()
        )),
        drain(preloads.run(
            |o, c| timed("Preload", o, c, reconcile::<Preloads, _>),
            error_policy,
            ctx.clone()
        )),
        drain(datastores.run(
            |o, c| timed("MediaDataStore", o, c, reconcile::<MediaDataStores, _>),
            error_policy,
            ctx.clone()
        )),
        drain(policies.run(
            |o, c| timed("LifecyclePolicy", o, c, reconcile::<LifecyclePolicies, _>),
            error_policy,
            ctx.clone()
        )),
        gauges,
    );
}

/// Runs the controllers whenever this replica is the leader, until `shutdown` is cancelled.
/// Losing the lease stops the controllers (gracefully) and waits to be elected again.
pub async fn run_with_leader_election<S: StudioStore>(
    ctx: Arc<Context<S>>,
    lease: LeaseSettings,
    shutdown: CancellationToken,
) -> Result<(), ControllersError> {
    let manager = LeaseManagerBuilder::new(ctx.client.clone(), &lease.name)
        .with_namespace(&lease.namespace)
        .with_identity(&lease.identity)
        .with_duration(lease.duration_secs)
        .with_grace(lease.duration_secs / 3)
        .build()
        .await?;
    let (mut leading, task) = manager.watch().await;
    while !shutdown.is_cancelled() {
        // Wait for the lease.
        while !*leading.borrow_and_update() {
            tokio::select! {
                () = shutdown.cancelled() => break,
                changed = leading.changed() => changed.map_err(|_| ControllersError::LeaseTaskStopped)?,
            }
        }
        if shutdown.is_cancelled() {
            break;
        }
        tracing::info!(identity = %lease.identity, "acquired the leader lease; starting controllers");
        ctx.metrics.leader.set(1);
        let term = shutdown.child_token();
        let controllers = tokio::spawn(run_controllers(ctx.clone(), term.clone()));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                changed = leading.changed() => {
                    if changed.is_err() || !*leading.borrow_and_update() {
                        tracing::warn!("lost the leader lease; stopping controllers");
                        break;
                    }
                }
            }
        }
        term.cancel();
        if let Err(e) = controllers.await {
            tracing::error!(error = %e, "controller task panicked");
        }
        ctx.metrics.leader.set(0);
    }
    // Dropping the receiver makes the lease task release the lease for a fast hand-over.
    drop(leading);
    match task.await {
        Ok(result) => result.map(drop).map_err(ControllersError::from),
        Err(_) => Err(ControllersError::LeaseTaskStopped),
    }
}
