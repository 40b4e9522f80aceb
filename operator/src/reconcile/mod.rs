//! Reconcilers: load observed state, call the planner, apply the plan through the store port
//! and the Kubernetes API, and map failures to conditions, events, requeues and metric labels
//! (in one place: [`ReconcileError::label`] and [`failure_conditions`]).
//!
//! One generic driver ([`driver`]: [`sync`], [`cleanup`], [`reconcile`]) serves all seven
//! kinds. Each kind module implements [`Kind`] and [`LiveKind`] with only its own parts:
//! [`Workspaces`] (with the key Secret read), [`Snapshots`], [`Shares`], [`EventSinks`], [`Preloads`]
//! (a Job per node), [`MediaDataStores`] (whose changes the store may refuse) and
//! [`LifecyclePolicies`] (the GC Job, no finalizer). This module holds what they share: the
//! context, errors, backoff, the status patch and event publishing.

pub mod driver;
pub mod eventsink;
pub mod lifecycle;
pub mod mediadatastore;
pub mod preload;
pub mod share;
pub mod snapshot;
pub mod workspace;

pub use driver::{Kind, LiveKind, StatusFields, cleanup, reconcile, sync};
pub use eventsink::EventSinks;
pub use lifecycle::LifecyclePolicies;
pub use mediadatastore::MediaDataStores;
pub use preload::Preloads;
pub use share::Shares;
pub use snapshot::Snapshots;
pub use workspace::Workspaces;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer;
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::crd::FIELD_MANAGER;
use crate::crd::conditions::{self, Desired, reason};
use crate::gc_job::GcJobSettings;
use crate::keys::SecretReadError;
use crate::metrics::Metrics;
use crate::plan::EventNote;
use crate::preload_job::PreloadJobSettings;
use crate::store::{DataStoreRefusal, PutDataStoreError, StoreError, StoreErrorKind};

/// How many plan/apply rounds one reconcile may take before giving up (a planner that keeps
/// asking for ops after they were applied is a bug; this bounds it).
const MAX_ROUNDS: usize = 4;

/// Shared state of the controllers.
pub struct Context<S> {
    pub client: kube::Client,
    pub store: S,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// The clock; injected so tests control `now`.
    pub clock: fn() -> Timestamp,
    pub backoff: Backoff,
    pub gc: GcJobSettings,
    /// How preload Jobs run (they share the GC Jobs' namespace and store access).
    pub preload: PreloadJobSettings,
    /// Seals EventSinks' credentials for the store (the relays open them with the same key).
    pub sink_secret_key: Option<drive::data::Kek>,
}

/// Errors of a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("metadata store: {0}")]
    Store(#[from] StoreError),
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<ReconcileError>>),
    #[error(transparent)]
    KeySecret(#[from] SecretReadError),
    #[error("object has no {0}")]
    MissingField(&'static str),
    #[error("invalid spec: {0}")]
    InvalidSpec(#[from] crate::plan::SpecError),
    #[error(
        "the Job {job} belongs to another owner ({other:?}): two names shorten to one Job name; rename one"
    )]
    JobNameTaken { job: String, other: String },
    #[error("planner still wants changes after {MAX_ROUNDS} rounds")]
    NoConvergence,
    /// The store refused a MediaDataStore's change for what it holds (a stored document, the
    /// stored media id schema). Retried with backoff: a document purged with its file can make
    /// the change acceptable, and nothing else would tell the operator.
    #[error("the metadata store refused the DataStore change: {0}")]
    DataStoreRefused(#[from] DataStoreRefusal),
}

impl From<PutDataStoreError> for ReconcileError {
    fn from(e: PutDataStoreError) -> ReconcileError {
        match e {
            PutDataStoreError::Refused(r) => ReconcileError::DataStoreRefused(r),
            PutDataStoreError::Store(e) => ReconcileError::Store(e),
        }
    }
}

impl ReconcileError {
    /// A stable, low-cardinality metric label.
    pub fn label(&self) -> &'static str {
        match self {
            ReconcileError::Store(e) => match e.kind {
                StoreErrorKind::Unavailable => "store_unavailable",
                StoreErrorKind::Conflict => "store_conflict",
                _ => "store_error",
            },
            ReconcileError::Kube(_) => "kube_api",
            ReconcileError::Finalizer(inner) => match inner.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.label(),
                _ => "finalizer",
            },
            ReconcileError::KeySecret(_) => "key_secret_unreadable",
            ReconcileError::MissingField(_) => "missing_field",
            ReconcileError::InvalidSpec(_) => "invalid_spec",
            ReconcileError::JobNameTaken { .. } => "job_name_taken",
            ReconcileError::NoConvergence => "no_convergence",
            ReconcileError::DataStoreRefused(r) => r.label(),
        }
    }
}

/// The Ready condition for a store failure.
pub fn failure_conditions(e: &StoreError) -> Vec<Desired> {
    let (why, message) = if e.kind == StoreErrorKind::Unavailable {
        (
            reason::STORE_UNAVAILABLE,
            format!("the metadata store is unavailable; retrying with backoff: {e}"),
        )
    } else {
        (
            reason::STORE_ERROR,
            format!("the metadata store refused the operation: {e}"),
        )
    };
    vec![
        Desired::no(conditions::READY, why, message.clone()),
        Desired::yes(conditions::DEGRADED, why, message),
    ]
}

/// The Ready condition when the store refused a MediaDataStore's change. Not Degraded: the
/// stored DataStore still serves its documents under the schema it had; what is wrong is the
/// spec, which someone has to change (or the documents that fail it).
pub fn refusal_conditions(r: &DataStoreRefusal) -> Vec<Desired> {
    let (why, message) = match r {
        DataStoreRefusal::SchemaRefused(m) => (
            reason::SCHEMA_REFUSED,
            format!(
                "{m}; nothing was changed: the stored DataStore keeps its schema (status.version). \
                 Change the schema so that the stored documents pass it; retrying with backoff"
            ),
        ),
        DataStoreRefusal::MediaIdSchemaImmutable(m) => (
            reason::MEDIA_ID_SCHEMA_IMMUTABLE,
            format!("{m}; the stored DataStore is unchanged"),
        ),
    };
    vec![Desired::no(conditions::READY, why, message)]
}

/// The conditions when an encrypted workspace's key Secret cannot be read (not: does not
/// exist; that is `KeySecretMissing` from the planner).
pub fn key_read_failure_conditions(e: &SecretReadError) -> Vec<Desired> {
    let message = format!("{e}; retrying with backoff");
    vec![
        Desired::no(conditions::READY, reason::KEY_SECRET_UNREADABLE, message.clone()),
        Desired::yes(conditions::DEGRADED, reason::KEY_SECRET_UNREADABLE, message),
    ]
}

/// Per-object exponential backoff for failed reconciles: 5 s, 10 s, 20 s ... capped at 5 min,
/// reset by a success. kube's Controller requeues with whatever `error_policy` returns; this
/// is where the exponent lives.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// The delay after `failures` consecutive failures (1 = the first).
    pub fn delay(failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(6);
        (Duration::from_secs(5) * 2u32.pow(exp)).min(Duration::from_secs(300))
    }

    /// Records a failure of `key` and returns how long to wait.
    pub fn fail(&self, key: &str) -> Duration {
        let mut map = drive::sync::lock(&self.failures);
        let n = map.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        Backoff::delay(*n)
    }

    /// Forgets the failures of `key`.
    pub fn succeed(&self, key: &str) {
        drive::sync::lock(&self.failures).remove(key);
    }
}

/// The backoff key of an object.
pub(crate) fn object_key<K: Resource>(obj: &K) -> String {
    format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or(""),
        obj.meta().name.as_deref().unwrap_or("")
    )
}

/// Patches the status subresource with server-side apply, only when it differs from what the
/// object already has (no write, no new resourceVersion, no watch event: no GitOps churn).
pub(crate) async fn patch_status_if_changed<K, St>(
    api: &Api<K>,
    obj: &K,
    current: Option<&St>,
    desired: &St,
) -> Result<bool, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    St: Serialize + PartialEq,
{
    if current == Some(desired) {
        return Ok(false);
    }
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": desired,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(&obj.name_any(), &params, &Patch::Apply(&body))
        .await?;
    Ok(true)
}

/// Publishes the plan's events. Event failures are logged, not fatal: an event is advisory.
pub(crate) async fn publish<K: Resource<DynamicType = ()>>(
    recorder: &Recorder,
    obj: &K,
    notes: &[EventNote],
) {
    let reference = obj.object_ref(&());
    for note in notes {
        let event = Event {
            type_: if note.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: note.reason.to_string(),
            note: Some(note.note.clone()),
            action: note.action.to_string(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &reference).await {
            tracing::warn!(error = %e, reason = note.reason, "could not publish event");
        }
    }
}

/// The action after a successful reconcile.
pub(crate) fn action(requeue: Option<Duration>) -> Action {
    requeue.map_or_else(Action::await_change, Action::requeue)
}

/// Conditions after a store failure, keeping the previous ones' transition times.
pub fn failed_conditions(
    previous: &[Condition],
    e: &StoreError,
    generation: i64,
    now: Timestamp,
) -> Vec<Condition> {
    conditions::merge(previous, &failure_conditions(e), generation, now)
}

/// The controllers' error policy: count the failure and back off exponentially.
pub fn error_policy<K: Resource, S>(obj: Arc<K>, error: &ReconcileError, ctx: Arc<Context<S>>) -> Action {
    let delay = ctx.backoff.fail(&object_key(obj.as_ref()));
    tracing::warn!(error = %error, label = error.label(), retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}
