//! The Share kind of the driver: observes the workspace and the grant in the store, puts or
//! revokes the grant.

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;

use super::driver::{Kind, LiveKind, StatusFields, namespaced_api, namespaced_names};
use super::{Context, ReconcileError};
use crate::crd::{Share, ShareStatus};
use crate::plan::share::{self as planner, Input, Observed, Op, desired_grant};
use crate::plan::{EventNote, Plan};
use crate::store::StudioStore;

/// The Share kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shares;

impl Kind for Shares {
    type Resource = Share;
    type Status = ShareStatus;
    type Input<'a> = Input<'a>;
    type Observed = Observed;
    type Op = Op;
    type Loaded = ();

    fn input(s: &Share, _now: Timestamp) -> Result<Input<'_>, ReconcileError> {
        let (namespace, name) = namespaced_names(s)?;
        Ok(Input {
            namespace,
            name,
            generation: s.metadata.generation.unwrap_or_default(),
            spec: &s.spec,
            status: s.status.as_ref(),
        })
    }

    /// Reads the workspace and the grant from the store.
    async fn observe<S: StudioStore>(
        &self,
        store: &S,
        input: &Self::Input<'_>,
    ) -> Result<Observed, ReconcileError> {
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

    fn plan(input: &Input<'_>, observed: &Observed, now: Timestamp) -> Plan<Op, ShareStatus> {
        planner::plan(input, observed, now)
    }

    async fn apply<S: StudioStore>(&self, store: &S, ops: &[Op], _: &()) -> Result<(), ReconcileError> {
        for op in ops {
            match op {
                Op::Put { workspace, grant } => store.put_share(workspace, grant).await?,
                Op::Revoke { workspace, name } => drop(store.delete_share(workspace, name).await?),
            }
        }
        Ok(())
    }

    /// Revoke the grant.
    fn plan_cleanup(input: &Input<'_>, observed: &Observed) -> Vec<Op> {
        planner::plan_cleanup(input, observed)
    }

    fn cleanup_note(ops: &[Op]) -> Option<EventNote> {
        (!ops.is_empty())
            .then(|| EventNote::normal("Revoked", "Delete", "the grant was revoked in the metadata store"))
    }
}

impl LiveKind for Shares {
    fn live<S: StudioStore>(_: &Context<S>, _: &Arc<Share>) -> Shares {
        Shares
    }

    fn api(client: kube::Client, obj: &Share) -> Result<Api<Share>, ReconcileError> {
        namespaced_api(client, obj)
    }
}

impl StatusFields for ShareStatus {
    fn observed_generation_mut(&mut self) -> &mut Option<i64> {
        &mut self.observed_generation
    }

    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}
