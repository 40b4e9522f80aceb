//! The EventSink kind of the driver: observes the workspace and the sink in the store, puts or
//! deletes the sink. The relay Deployment delivers; the status follows its record.

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;

use super::driver::{Kind, LiveKind, StatusFields, namespaced_api, namespaced_names};
use super::{Context, ReconcileError};
use crate::crd::{EventSink, EventSinkStatus};
use crate::plan::eventsink::{self as planner, Input, Observed, Op, desired_sink, sink_id};
use crate::plan::{EventNote, Plan};
use crate::store::StudioStore;

/// The EventSink kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventSinks;

impl Kind for EventSinks {
    type Resource = EventSink;
    type Status = EventSinkStatus;
    type Input<'a> = Input<'a>;
    type Observed = Observed;
    type Op = Op;
    type Loaded = ();

    fn input(s: &EventSink, _now: Timestamp) -> Result<Input<'_>, ReconcileError> {
        let (namespace, name) = namespaced_names(s)?;
        Ok(Input {
            namespace,
            name,
            generation: s.metadata.generation.unwrap_or_default(),
            spec: &s.spec,
            status: s.status.as_ref(),
        })
    }

    /// Reads the sink (by the resource's name, so cleanup finds it whatever the spec says) and,
    /// when the spec names one validly, the workspace.
    async fn observe<S: StudioStore>(
        &self,
        store: &S,
        input: &Self::Input<'_>,
    ) -> Result<Observed, ReconcileError> {
        let sink = store
            .get_event_sink(&sink_id(input.namespace, input.name))
            .await?;
        let workspace = match desired_sink(input) {
            Ok(desired) => store.get_workspace(&desired.workspace).await?,
            Err(_) => None,
        };
        Ok(Observed { workspace, sink })
    }

    fn plan(input: &Input<'_>, observed: &Observed, now: Timestamp) -> Plan<Op, EventSinkStatus> {
        planner::plan(input, observed, now)
    }

    async fn apply<S: StudioStore>(&self, store: &S, ops: &[Op], _: &()) -> Result<(), ReconcileError> {
        for op in ops {
            match op {
                Op::Put {
                    id,
                    workspace,
                    spec,
                    start,
                } => drop(store.put_event_sink(id, workspace, spec, *start).await?),
                Op::Delete { id } => drop(store.delete_event_sink(id).await?),
            }
        }
        Ok(())
    }

    /// Delete the sink: its position no longer holds the feed's retention back.
    fn plan_cleanup(input: &Input<'_>, observed: &Observed) -> Vec<Op> {
        planner::plan_cleanup(input, observed)
    }

    fn cleanup_note(ops: &[Op]) -> Option<EventNote> {
        (!ops.is_empty()).then(|| {
            EventNote::normal(
                "Deleted",
                "Delete",
                "the sink was removed from the metadata store",
            )
        })
    }
}

impl LiveKind for EventSinks {
    fn live<S: StudioStore>(_: &Context<S>, _: &Arc<EventSink>) -> EventSinks {
        EventSinks
    }

    fn api(client: kube::Client, obj: &EventSink) -> Result<Api<EventSink>, ReconcileError> {
        namespaced_api(client, obj)
    }
}

impl StatusFields for EventSinkStatus {
    fn observed_generation_mut(&mut self) -> &mut Option<i64> {
        &mut self.observed_generation
    }

    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}
