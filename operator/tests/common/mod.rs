//! Shared builders for the operator tests.
#![allow(dead_code)]

pub mod mock;

use jiff::Timestamp;
use kube::api::ObjectMeta;
use operator::crd::{
    DeletionPolicy, EventSink, EventSinkFilter, EventSinkSpec, MediaDataStore, MediaDataStoreSpec,
    Permission, Share, ShareSpec, Snapshot, SnapshotSpec, StartFrom, Subject, SubjectKind,
    TimelineCollection, WebhookSink, Workspace, WorkspaceKind, WorkspaceSpec,
};
use operator::keys::StaticKeySource;

/// A fresh database of `pg` with the store's migrations: the engine's store, and the
/// operator's adapter over it.
pub async fn store_on(
    pg: &drive_testkit::pg::PgServer,
) -> (
    drive::PgMetaStore,
    operator::store::drive_adapter::MetaStoreAdapter,
) {
    drive_testkit::init_tracing();
    let db = pg.create_database().await.expect("create database");
    let meta = drive::PgMetaStore::connect(&drive::MetaConfig::new(pg.url(&db)))
        .await
        .expect("connect");
    (
        meta.clone(),
        operator::store::drive_adapter::MetaStoreAdapter(meta),
    )
}

/// A key source without Secrets, for unencrypted workspaces.
pub const NO_KEYS: StaticKeySource = StaticKeySource::new();
/// The EventSink kind with no Secrets and no sink secrets key (sinks without credentials).
pub const NO_SINK_SECRETS: operator::reconcile::EventSinks<StaticKeySource> =
    operator::reconcile::EventSinks {
        keys: StaticKeySource::new(),
        sealing_key: None,
    };

pub fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).expect("valid timestamp")
}

pub fn meta(ns: &str, name: &str, generation: i64) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(ns.into()),
        generation: Some(generation),
        uid: Some(format!("uid-{name}")),
        ..ObjectMeta::default()
    }
}

pub fn workspace_spec(kind: WorkspaceKind, policy: DeletionPolicy) -> WorkspaceSpec {
    WorkspaceSpec {
        kind,
        owners: vec!["User:alice".into()],
        block_size_bytes: 4 << 20,
        encryption: None,
        object_store: None,
        quota_bytes: Some(1 << 30),
        deletion_policy: policy,
    }
}

pub fn workspace(ns: &str, name: &str, spec: WorkspaceSpec) -> Workspace {
    Workspace {
        metadata: meta(ns, name, 1),
        spec,
        status: None,
    }
}

pub fn snapshot(ns: &str, name: &str, ws: &str, path: &str) -> Snapshot {
    Snapshot {
        metadata: meta(ns, name, 1),
        spec: SnapshotSpec {
            workspace: ws.into(),
            path: path.into(),
            publish_from: None,
        },
        status: None,
    }
}

pub fn share(ns: &str, name: &str, ws: &str, expires: Option<Timestamp>) -> Share {
    Share {
        metadata: meta(ns, name, 1),
        spec: ShareSpec {
            workspace: ws.into(),
            path: "/comp".into(),
            subjects: vec![
                Subject {
                    kind: SubjectKind::ServiceAccount,
                    name: "render".into(),
                    namespace: Some("farm".into()),
                },
                Subject {
                    kind: SubjectKind::Group,
                    name: "review".into(),
                    namespace: None,
                },
            ],
            permission: Permission::Write,
            expires_at: expires.map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time),
        },
        status: None,
    }
}

/// A webhook EventSink of workspace `ws` (no finalizer, no status).
pub fn event_sink(ns: &str, name: &str, ws: &str, url: &str) -> EventSink {
    EventSink {
        metadata: meta(ns, name, 1),
        spec: EventSinkSpec {
            workspace: ws.into(),
            nats: None,
            webhook: Some(WebhookSink {
                url: url.into(),
                signing_secret_ref: None,
            }),
            filter: EventSinkFilter {
                path_prefixes: vec!["/comp".into()],
                kinds: Vec::new(),
            },
            start_from: StartFrom::Now,
        },
        status: None,
    }
}

/// A JSON object (the type of a MediaDataStore's schemas) from `json!`.
pub fn json_object(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => m,
        other => panic!("not a JSON object: {other}"),
    }
}

/// The document schema of [`media_datastore`]: a frame rate and shots with start and end.
pub fn shots_schema() -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "required": ["fps", "shots"],
        "properties": {
            "fps": {"type": "number", "exclusiveMinimum": 0},
            "shots": {"type": "array", "items": {
                "type": "object", "required": ["start", "end"],
                "properties": {"start": {"type": "number"}, "end": {"type": "number"}}
            }}
        }
    })
}

/// A shot-boundaries MediaDataStore (no finalizer, no status): media ids `{"asset": ...}`,
/// `fps` queryable, shots as a timeline, a reader group and a writer ServiceAccount of its
/// own namespace.
pub fn media_datastore(ns: &str, name: &str, policy: DeletionPolicy) -> MediaDataStore {
    MediaDataStore {
        metadata: meta(ns, name, 1),
        spec: MediaDataStoreSpec {
            analysis_type: "shot-boundaries".into(),
            version: 1,
            schema: json_object(shots_schema()),
            media_id_schema: json_object(serde_json::json!({
                "type": "object", "required": ["asset"], "properties": {"asset": {"type": "string"}}
            })),
            queryable: vec!["fps".into()],
            timeline: vec![TimelineCollection {
                path: "shots".into(),
                start: "start".into(),
                end: Some("end".into()),
                region: None,
            }],
            readers: vec![Subject {
                kind: SubjectKind::Group,
                name: "review".into(),
                namespace: None,
            }],
            writers: vec![Subject {
                kind: SubjectKind::ServiceAccount,
                name: "shot-detector".into(),
                namespace: None,
            }],
            admins: Vec::new(),
            deletion_policy: policy,
        },
        status: None,
    }
}
