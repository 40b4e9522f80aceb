//! The Workspace kind of the driver: observes the workspace and its usage in the store,
//! creates, updates or (on deletion, per `deletionPolicy`) soft-deletes it.
//!
//! An encrypted Workspace needs its key-encryption key only to be created: [`Kind::load`]
//! reads the Secret named by `spec.encryption.keySecretRef` (through the [`KeySource`] the
//! kind carries) when the store has no such workspace yet, and [`Kind::apply`] hands the key
//! to the store, which wraps a new data key with it. Cleanup never reads the Secret.

use std::sync::Arc;

use drive::data::Kek;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;

use super::driver::{Kind, LiveKind, StatusFields, namespaced_api, namespaced_names};
use super::{Context, ReconcileError};
use crate::crd::{Workspace, WorkspaceStatus};
use crate::keys::{KeySource, SecretKeySource, SecretLookup, parse_kek};
use crate::plan::workspace::{self as planner, Input, KeyState, Observed, Op, workspace_store_name};
use crate::plan::{EventNote, Plan};
use crate::store::StudioStore;

/// The Workspace kind, with the source of key-encryption keys: the key Secrets through the
/// kube client when live, a fixed map in the store-only tests.
#[derive(Debug, Clone)]
pub struct Workspaces<K = SecretKeySource>(pub K);

impl<K: KeySource> Kind for Workspaces<K> {
    type Resource = Workspace;
    type Status = WorkspaceStatus;
    type Input<'a> = Input<'a>;
    type Observed = Observed;
    type Op = Op;
    /// The key-encryption key for creating an encrypted workspace.
    type Loaded = Option<Kek>;

    fn input(ws: &Workspace, _now: Timestamp) -> Result<Input<'_>, ReconcileError> {
        let (namespace, name) = namespaced_names(ws)?;
        Ok(Input {
            namespace,
            name,
            generation: ws.metadata.generation.unwrap_or_default(),
            spec: &ws.spec,
            status: ws.status.as_ref(),
        })
    }

    /// Reads what the store holds for the workspace. `key` is left [`KeyState::NotLoaded`];
    /// [`Kind::load`] fills it in.
    async fn observe<S: StudioStore>(
        &self,
        store: &S,
        input: &Self::Input<'_>,
    ) -> Result<Observed, ReconcileError> {
        let Ok(name) = workspace_store_name(input.namespace, input.name) else {
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

    async fn load(
        &self,
        input: &Self::Input<'_>,
        observed: &mut Observed,
    ) -> Result<Option<Kek>, ReconcileError> {
        let (key, kek) = load_key(&self.0, input, observed).await?;
        observed.key = key;
        Ok(kek)
    }

    fn plan(input: &Input<'_>, observed: &Observed, now: Timestamp) -> Plan<Op, WorkspaceStatus> {
        planner::plan(input, observed, now)
    }

    async fn apply<S: StudioStore>(
        &self,
        store: &S,
        ops: &[Op],
        kek: &Option<Kek>,
    ) -> Result<(), ReconcileError> {
        for op in ops {
            match op {
                Op::Create(new) => drop(store.create_workspace(new, kek.as_ref()).await?),
                Op::Update { name, change } => drop(store.update_workspace(name, change).await?),
                Op::Delete { name } => drop(store.delete_workspace(name).await?),
            }
        }
        Ok(())
    }

    /// Soft-delete with `Delete`, keep with `Retain`.
    fn plan_cleanup(input: &Input<'_>, observed: &Observed) -> Vec<Op> {
        planner::plan_cleanup(input, observed)
    }

    fn cleanup_note(ops: &[Op]) -> Option<EventNote> {
        Some(if ops.is_empty() {
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
        })
    }
}

impl LiveKind for Workspaces {
    fn live<S: StudioStore>(ctx: &Context<S>, _: &Arc<Workspace>) -> Workspaces {
        Workspaces(SecretKeySource::new(ctx.client.clone()))
    }

    fn api(client: kube::Client, obj: &Workspace) -> Result<Api<Workspace>, ReconcileError> {
        namespaced_api(client, obj)
    }
}

impl StatusFields for WorkspaceStatus {
    fn observed_generation_mut(&mut self) -> &mut Option<i64> {
        &mut self.observed_generation
    }

    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}

/// Reads the key-encryption key when the planner will need it: the spec asks for encryption
/// and the store has no workspace yet. Returns what the planner may know about it and, when
/// loaded, the key for the create. A Secret that cannot be read at all (forbidden, API down)
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
        SecretLookup::Found(material, _) => match parse_kek(material.as_bytes()) {
            Ok(kek) => (KeyState::Loaded, Some(kek)),
            Err(e) => (
                KeyState::Invalid(format!("key {key:?} of Secret {ns}/{name}: {e}")),
                None,
            ),
        },
    })
}
