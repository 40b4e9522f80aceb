//! The EventSink kind of the driver: observes the workspace and the sink in the store (and the
//! Secret holding the sink's credential, sealed with the sink secrets key), puts or deletes the
//! sink. The relay Deployment delivers; the status follows its record.

use std::sync::Arc;

use drive::data::Kek;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;

use super::driver::{Kind, LiveKind, StatusFields, namespaced_api, namespaced_names};
use super::{Context, ReconcileError};
use crate::crd::{EventSink, EventSinkStatus};
use crate::keys::{KeySource, SecretKeySource, SecretLookup};
use crate::plan::eventsink::{
    self as planner, Input, Observed, Op, SinkSecret, desired_sink, secret_ref, sink_id,
};
use crate::plan::{EventNote, Plan};
use crate::store::StudioStore;

/// The label a Secret needs before an EventSink may use it as its credential.
pub const SINK_CREDENTIAL_LABEL: &str = "studiodrive.dev/event-sink-credential";

/// The EventSink kind, with where sink credentials are read (Secrets through the API) and the
/// key that seals them for the store (none: sinks naming a Secret wait, `SinkSecretUnavailable`).
#[derive(Debug, Clone)]
pub struct EventSinks<K = SecretKeySource> {
    pub keys: K,
    pub sealing_key: Option<Kek>,
}

impl<K: KeySource> EventSinks<K> {
    /// What the spec's Secret gives the sink: the sealed value to record (the recorded one
    /// when it still opens to the Secret's value, so an unchanged Secret changes nothing), or
    /// why there is none. Messages name the Secret and key, never the value. A Secret that
    /// cannot be read at all (forbidden, API down) is an error, retried with backoff.
    async fn sink_secret(
        &self,
        input: &Input<'_>,
        target: &drive::relay::SinkTarget,
        recorded: Option<&crate::store::EventSinkRecord>,
    ) -> Result<SinkSecret, ReconcileError> {
        let Some(secret) = secret_ref(input.spec) else {
            return Ok(SinkSecret::None);
        };
        let (ns, name, key) = (input.namespace, secret.name.as_str(), secret.key.as_str());
        let Some(sealing_key) = &self.sealing_key else {
            return Ok(SinkSecret::Unavailable(format!(
                "the sink's credential is key {key:?} of Secret {ns}/{name}, but the operator has no \
                 sink secrets key to seal it with (--sink-secret-key-file)"
            )));
        };
        let value = match self.keys.lookup(ns, name, key).await? {
            SecretLookup::SecretMissing => {
                return Ok(SinkSecret::Unavailable(format!(
                    "Secret {ns}/{name} does not exist"
                )));
            }
            SecretLookup::KeyMissing => {
                return Ok(SinkSecret::Unavailable(format!(
                    "Secret {ns}/{name} has no key {key:?}"
                )));
            }
            // The Secret's owner opts in: the value goes to an endpoint the EventSink's author
            // chooses, who may not be allowed to read Secrets.
            SecretLookup::Found(_, labels)
                if labels.get(SINK_CREDENTIAL_LABEL).map(String::as_str) != Some("true") =>
            {
                return Ok(SinkSecret::Unavailable(format!(
                    "Secret {ns}/{name} is not labelled {SINK_CREDENTIAL_LABEL}=true (the label lets \
                     EventSinks of this namespace send what it holds to their endpoints)"
                )));
            }
            SecretLookup::Found(value, _) => value,
        };
        if let Err(why) = drive::relay::check_secret(target, value.as_bytes()) {
            return Ok(SinkSecret::Unavailable(format!(
                "key {key:?} of Secret {ns}/{name}: {why}"
            )));
        }
        let id = sink_id(input.namespace, input.name);
        let unchanged = recorded
            .and_then(|r| r.spec.sealed_secret.as_ref())
            .filter(|sealed| {
                drive::relay::open_secret(sealing_key, &id, sealed).is_ok_and(|v| v == value.as_bytes())
            });
        Ok(match unchanged {
            Some(sealed) => SinkSecret::Sealed(sealed.clone()),
            None => match drive::relay::seal_secret(sealing_key, &id, value.as_bytes()) {
                Ok(sealed) => SinkSecret::Sealed(sealed),
                Err(e) => SinkSecret::Unavailable(format!("key {key:?} of Secret {ns}/{name}: {e}")),
            },
        })
    }
}

impl<K: KeySource> Kind for EventSinks<K> {
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
        let (workspace, secret) = match desired_sink(input) {
            Ok(desired) => (
                store.get_workspace(&desired.workspace).await?,
                self.sink_secret(input, &desired.spec.target, sink.as_ref())
                    .await?,
            ),
            Err(_) => (None, SinkSecret::None),
        };
        Ok(Observed {
            workspace,
            sink,
            secret,
        })
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
    fn live<S: StudioStore>(ctx: &Context<S>, _: &Arc<EventSink>) -> EventSinks {
        EventSinks {
            keys: SecretKeySource::new(ctx.client.clone()),
            sealing_key: ctx.sink_secret_key.clone(),
        }
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
