//! Custom resource types of the `studiodrive.dev/v1alpha1` API and what is shared by them:
//! condition helpers, names, and [`all`] for CRD generation.
//!
//! The types here are plain data (serde + schemars through kube's derives). They hold no
//! client and do no I/O, so the planners and tests use them directly. Validation that the API
//! server can do lives in the schema (types, ranges, enums, CEL rules); everything else is
//! checked again by the planners, which report `InvalidSpec` instead of failing.

pub mod conditions;
mod eventsink;
mod lifecycle;
mod mediadatastore;
mod preload;
pub mod schema_check;
mod share;
mod snapshot;
mod workspace;

pub use eventsink::{
    EventSink, EventSinkFilter, EventSinkSpec, EventSinkStatus, NatsSink, StartFrom, WebhookSink,
};
pub use lifecycle::{
    ExpireRule, LastRun, LifecyclePolicy, LifecyclePolicySpec, LifecyclePolicyStatus, LifecycleRules,
    PassCounts, PassResult, PolicyPhase, RetentionClass, SnapshotRetention, Throttle, TransitionRule,
    WorkspaceSelector,
};
pub use mediadatastore::{
    MediaDataStore, MediaDataStoreSpec, MediaDataStoreStatus, TimelineCollection, TimelineRegion,
};
pub use preload::{Preload, PreloadNodeStatus, PreloadPhase, PreloadSpec, PreloadStatus};
pub use share::{Permission, Share, ShareSpec, ShareStatus, Subject, SubjectKind};
pub use snapshot::{MergeModeSpec, PublishFrom, PublishModeSpec, Snapshot, SnapshotSpec, SnapshotStatus};
pub use workspace::{
    DeletionPolicy, Encryption, ObjectStoreRef, SecretKeyRef, SecretRef, Workspace, WorkspaceKind,
    WorkspaceSpec, WorkspaceStatus, WorkspaceUsage,
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every Studio Drive resource.
pub const GROUP: &str = "studiodrive.dev";
/// The finalizer the operator puts on resources whose deletion needs store cleanup.
pub const FINALIZER: &str = "studiodrive.dev/cleanup";
/// The server-side-apply field manager of the operator.
pub const FIELD_MANAGER: &str = "studiodrive";
/// The label that ties objects (GC Jobs, PVCs) to a workspace.
pub const WORKSPACE_LABEL: &str = "studiodrive.dev/workspace";

/// Every CRD of the API, in install order (Workspace first: the others reference it).
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        Workspace::crd(),
        Snapshot::crd(),
        Share::crd(),
        LifecyclePolicy::crd(),
        EventSink::crd(),
        Preload::crd(),
        MediaDataStore::crd(),
    ]
}

/// Errors while rendering CRDs.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    /// serde-saphyr could not serialise a CRD.
    #[error("render CRD {name} as YAML")]
    Yaml {
        name: String,
        #[source]
        source: serde_saphyr::SerializeError,
    },
}

/// One CRD as the YAML checked in under `crds/`.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, CrdError> {
    serde_saphyr::to_string(crd).map_err(|source| CrdError::Yaml {
        name: crd.metadata.name.clone().unwrap_or_default(),
        source,
    })
}

/// The file name a CRD is checked in under (`crds/<plural>.<group>.yaml`).
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// All CRDs as one multi-document YAML stream (what `studiodrive-operator crds` prints).
pub fn all_yaml() -> Result<String, CrdError> {
    let mut out = String::new();
    for crd in all() {
        out.push_str("---\n");
        out.push_str(&to_yaml(&crd)?);
    }
    Ok(out)
}
