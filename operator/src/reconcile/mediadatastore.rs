//! The MediaDataStore kind of the driver: observes the DataStore `<namespace>/<name>` in the
//! store, puts it (the store may refuse: the refusal becomes `ReconcileError::DataStoreRefused`,
//! which the driver writes to the status as `SchemaRefused` or `MediaIdSchemaImmutable` and the
//! error policy retries with backoff), and on deletion removes it with `deletionPolicy: Delete`.

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;

use super::driver::{Kind, LiveKind, StatusFields, namespaced_api, namespaced_names};
use super::{Context, ReconcileError};
use crate::crd::{MediaDataStore, MediaDataStoreStatus};
use crate::plan::mediadatastore::{self as planner, Input, Observed, Op, store_name};
use crate::plan::{EventNote, Plan};
use crate::store::StudioStore;

/// The MediaDataStore kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct MediaDataStores;

impl Kind for MediaDataStores {
    type Resource = MediaDataStore;
    type Status = MediaDataStoreStatus;
    type Input<'a> = Input<'a>;
    type Observed = Observed;
    type Op = Op;
    type Loaded = ();

    fn input(d: &MediaDataStore, _now: Timestamp) -> Result<Input<'_>, ReconcileError> {
        let (namespace, name) = namespaced_names(d)?;
        Ok(Input {
            namespace,
            name,
            generation: d.metadata.generation.unwrap_or_default(),
            spec: &d.spec,
            status: d.status.as_ref(),
        })
    }

    /// Reads the DataStore by the resource's name (so cleanup finds it whatever the spec says).
    async fn observe<S: StudioStore>(
        &self,
        store: &S,
        input: &Self::Input<'_>,
    ) -> Result<Observed, ReconcileError> {
        let Ok(name) = store_name(input.namespace, input.name) else {
            return Ok(Observed::default());
        };
        Ok(Observed {
            record: store.get_media_datastore(&name).await?,
        })
    }

    fn plan(input: &Input<'_>, observed: &Observed, now: Timestamp) -> Plan<Op, MediaDataStoreStatus> {
        planner::plan(input, observed, now)
    }

    async fn apply<S: StudioStore>(&self, store: &S, ops: &[Op], _: &()) -> Result<(), ReconcileError> {
        for op in ops {
            match op {
                Op::Put(spec) => drop(store.put_media_datastore(spec).await?),
                Op::Delete { name } => drop(store.delete_media_datastore(name).await?),
            }
        }
        Ok(())
    }

    fn cleanup_without_store(input: &Input<'_>) -> Option<Vec<Op>> {
        planner::cleanup_without_store(input)
    }

    /// Delete the DataStore and its documents with `Delete`; keep them with `Retain`.
    fn plan_cleanup(input: &Input<'_>, observed: &Observed) -> Vec<Op> {
        planner::plan_cleanup(input, observed)
    }

    fn cleanup_note(ops: &[Op]) -> Option<EventNote> {
        Some(if ops.is_empty() {
            EventNote::normal(
                "Retained",
                "Delete",
                "the DataStore and its documents are kept in the metadata store (deletionPolicy Retain, or none was recorded)",
            )
        } else {
            EventNote::normal(
                "Deleted",
                "Delete",
                "the DataStore and its documents were deleted from the metadata store",
            )
        })
    }
}

impl LiveKind for MediaDataStores {
    fn live<S: StudioStore>(_: &Context<S>, _: &Arc<MediaDataStore>) -> MediaDataStores {
        MediaDataStores
    }

    fn api(client: kube::Client, obj: &MediaDataStore) -> Result<Api<MediaDataStore>, ReconcileError> {
        namespaced_api(client, obj)
    }
}

impl StatusFields for MediaDataStoreStatus {
    fn observed_generation_mut(&mut self) -> &mut Option<i64> {
        &mut self.observed_generation
    }

    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}
