//! The Snapshot kind of the driver: observes the workspace and the snapshot in the store,
//! takes or releases the snapshot.

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;

use super::driver::{Kind, LiveKind, StatusFields, namespaced_api, namespaced_names};
use super::{Context, ReconcileError};
use crate::crd::{Snapshot, SnapshotStatus};
use crate::plan::snapshot::{self as planner, Input, Observed, Op, targets};
use crate::plan::{EventNote, Plan};
use crate::store::StudioStore;

/// The Snapshot kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshots;

impl Kind for Snapshots {
    type Resource = Snapshot;
    type Status = SnapshotStatus;
    type Input<'a> = Input<'a>;
    type Observed = Observed;
    type Op = Op;
    type Loaded = ();

    fn input(s: &Snapshot, _now: Timestamp) -> Result<Input<'_>, ReconcileError> {
        let (namespace, name) = namespaced_names(s)?;
        Ok(Input {
            namespace,
            name,
            generation: s.metadata.generation.unwrap_or_default(),
            spec: &s.spec,
            status: s.status.as_ref(),
        })
    }

    /// Reads the workspace and the snapshot from the store.
    async fn observe<S: StudioStore>(
        &self,
        store: &S,
        input: &Self::Input<'_>,
    ) -> Result<Observed, ReconcileError> {
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

    fn plan(input: &Input<'_>, observed: &Observed, now: Timestamp) -> Plan<Op, SnapshotStatus> {
        planner::plan(input, observed, now)
    }

    async fn apply<S: StudioStore>(&self, store: &S, ops: &[Op], _: &()) -> Result<(), ReconcileError> {
        for op in ops {
            match op {
                Op::Create {
                    workspace,
                    name,
                    path,
                } => drop(store.create_snapshot(workspace, name, path).await?),
                Op::Publish {
                    workspace,
                    name,
                    from,
                    path,
                    mode,
                    merge,
                } => drop(store.publish(workspace, name, from, path, *mode, *merge).await?),
                Op::Delete { workspace, name } => drop(store.delete_snapshot(workspace, name).await?),
            }
        }
        Ok(())
    }

    /// Release the snapshot.
    fn plan_cleanup(input: &Input<'_>, observed: &Observed) -> Vec<Op> {
        planner::plan_cleanup(input, observed)
    }

    fn cleanup_note(ops: &[Op]) -> Option<EventNote> {
        (!ops.is_empty()).then(|| {
            EventNote::normal(
                "Released",
                "Delete",
                "the snapshot was released in the metadata store",
            )
        })
    }
}

impl LiveKind for Snapshots {
    fn live<S: StudioStore>(_: &Context<S>, _: &Arc<Snapshot>) -> Snapshots {
        Snapshots
    }

    fn api(client: kube::Client, obj: &Snapshot) -> Result<Api<Snapshot>, ReconcileError> {
        namespaced_api(client, obj)
    }
}

impl StatusFields for SnapshotStatus {
    fn observed_generation_mut(&mut self) -> &mut Option<i64> {
        &mut self.observed_generation
    }

    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}
