//! Reconcile logic against the real metadata store: PostgreSQL started by the testkit, the
//! engine's `PgMetaStore`, and the operator's adapter, driven through the store-only sync and
//! cleanup steps that the controllers run.

mod common;

use common::*;
use drive::PgMetaStore;
use drive::data::{DataKey, Kek, KeyError};
use drive::model::{Actor, NewNode, NodeKind, View};
use drive_testkit::pg::PgServer;
use operator::crd::{DeletionPolicy, WorkspaceKind, conditions};
use operator::crd::{Encryption, SecretKeyRef};
use operator::keys::StaticKeySource;
use operator::plan::{share as share_plan, snapshot as snap_plan, workspace as ws_plan};
use operator::reconcile::{self, ReconcileError, Shares, Snapshots, Workspaces};
use operator::store::drive_adapter::MetaStoreAdapter;
use operator::store::{NewWorkspace, StoreErrorKind, StudioStore};

fn ws_input(w: &operator::crd::Workspace) -> ws_plan::Input<'_> {
    ws_plan::Input {
        namespace: w.metadata.namespace.as_deref().unwrap_or_default(),
        name: w.metadata.name.as_deref().unwrap_or_default(),
        generation: w.metadata.generation.unwrap_or_default(),
        spec: &w.spec,
        status: w.status.as_ref(),
    }
}

#[tokio::test]
async fn workspace_is_created_idempotent_updated_and_deleted_per_policy() {
    let (meta, store) = store_on(PgServer::shared()).await;
    let mut w = workspace(
        "studio",
        "shot010",
        workspace_spec(WorkspaceKind::Team, DeletionPolicy::Delete),
    );
    let first = reconcile::sync(&Workspaces(NO_KEYS), &store, &ws_input(&w), at(10))
        .await
        .expect("create");
    let stored = meta
        .get_workspace("studio.shot010")
        .await
        .expect("workspace exists in the store");
    assert_eq!(stored.kind, drive::model::WorkspaceKind::Team);
    assert_eq!(stored.quota_bytes, Some(1 << 30));
    assert_eq!(
        first.status.workspace_id.as_deref(),
        Some(stored.id.to_string().as_str())
    );
    assert!(conditions::is_true(&first.status.conditions, "Ready"));

    // Same spec again: nothing changes (same id, same status, no new event rows).
    w.status = Some(first.status.clone());
    let events_before = meta
        .events_after(Some(stored.id), 0, 1000)
        .await
        .expect("events")
        .len();
    let again = reconcile::sync(&Workspaces(NO_KEYS), &store, &ws_input(&w), at(20))
        .await
        .expect("sync again");
    assert_eq!(again.status, first.status);
    assert_eq!(
        meta.events_after(Some(stored.id), 0, 1000)
            .await
            .expect("events")
            .len(),
        events_before
    );

    // A mutable field changes.
    w.spec.quota_bytes = Some(5 << 30);
    w.spec.owners = vec!["Group:comp".into()];
    reconcile::sync(&Workspaces(NO_KEYS), &store, &ws_input(&w), at(30))
        .await
        .expect("update");
    let updated = meta.get_workspace("studio.shot010").await.expect("get");
    assert_eq!(
        (updated.quota_bytes, updated.owners.clone()),
        (Some(5 << 30), vec!["Group:comp".to_string()])
    );
    assert_eq!(updated.id, stored.id);

    // Usage is reported from the live tree.
    let root = updated.root;
    meta.create(
        &Actor::system("test"),
        updated.id,
        root,
        &drive::model::Name::parse("a.exr").expect("name"),
        &NewNode::new(NodeKind::File, 0o644),
    )
    .await
    .expect("create a file");
    let with_file = reconcile::sync(&Workspaces(NO_KEYS), &store, &ws_input(&w), at(40))
        .await
        .expect("sync");
    assert_eq!(with_file.status.usage.map(|u| u.files), Some(1));

    // Delete policy: cleanup soft-deletes.
    reconcile::cleanup(&Workspaces(NO_KEYS), &store, &ws_input(&w))
        .await
        .expect("cleanup");
    assert_eq!(
        meta.get_workspace("studio.shot010")
            .await
            .expect_err("soft-deleted")
            .kind(),
        drive::ErrorKind::NotFound
    );
}

#[tokio::test]
async fn retain_keeps_the_workspace_and_a_recreated_resource_adopts_it() {
    let (meta, store) = store_on(PgServer::shared()).await;
    let w = workspace(
        "studio",
        "assets",
        workspace_spec(WorkspaceKind::Project, DeletionPolicy::Retain),
    );
    let first = reconcile::sync(&Workspaces(NO_KEYS), &store, &ws_input(&w), at(1))
        .await
        .expect("create");
    assert!(
        reconcile::cleanup(&Workspaces(NO_KEYS), &store, &ws_input(&w))
            .await
            .expect("cleanup")
            .is_empty()
    );
    let kept = meta.get_workspace("studio.assets").await.expect("retained");
    let again = reconcile::sync(&Workspaces(NO_KEYS), &store, &ws_input(&w), at(2))
        .await
        .expect("adopt");
    assert_eq!(again.status.workspace_id, Some(kept.id.to_string()));
    assert_eq!(again.status.workspace_id, first.status.workspace_id);
}

#[tokio::test]
async fn a_kind_change_that_slipped_past_cel_is_reported_as_invalid_spec() {
    let (_meta, store) = store_on(PgServer::shared()).await;
    let mut w = workspace(
        "studio",
        "drift",
        workspace_spec(WorkspaceKind::User, DeletionPolicy::Retain),
    );
    reconcile::sync(&Workspaces(NO_KEYS), &store, &ws_input(&w), at(1))
        .await
        .expect("create");
    w.spec.kind = WorkspaceKind::Project;
    assert_invalid_spec(&store, &w, "kind").await;
}

/// Syncs `w` and asserts Ready=False InvalidSpec with a message naming `field`.
async fn assert_invalid_spec(store: &MetaStoreAdapter, w: &operator::crd::Workspace, field: &str) {
    let p = reconcile::sync(&Workspaces(NO_KEYS), store, &ws_input(w), at(2))
        .await
        .expect("no store error");
    let ready = conditions::find(&p.status.conditions, "Ready").expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "InvalidSpec")
    );
    assert!(ready.message.contains(field), "{}", ready.message);
}

#[tokio::test]
async fn snapshot_view_matches_the_tree_at_that_moment_and_delete_releases_it() {
    let (meta, store) = store_on(PgServer::shared()).await;
    let w = workspace(
        "studio",
        "shot020",
        workspace_spec(WorkspaceKind::Team, DeletionPolicy::Retain),
    );
    reconcile::sync(&Workspaces(NO_KEYS), &store, &ws_input(&w), at(1))
        .await
        .expect("create workspace");
    let ws = meta.get_workspace("studio.shot020").await.expect("ws");
    let actor = Actor::system("test");
    let comp = meta
        .create(
            &actor,
            ws.id,
            ws.root,
            &drive::model::Name::parse("comp").expect("name"),
            &NewNode::new(NodeKind::Directory, 0o755),
        )
        .await
        .expect("mkdir");
    meta.create(
        &actor,
        ws.id,
        comp.ino,
        &drive::model::Name::parse("v1.exr").expect("name"),
        &NewNode::new(NodeKind::File, 0o644),
    )
    .await
    .expect("file");

    let s = snapshot("studio", "review-1", "shot020", "/comp");
    let input = snap_plan::Input {
        namespace: "studio",
        name: "review-1",
        generation: 1,
        spec: &s.spec,
        status: None,
    };
    let p = reconcile::sync(&Snapshots, &store, &input, at(2))
        .await
        .expect("take snapshot");
    assert!(p.status.ready_to_use);
    assert_eq!(p.status.files, Some(1));

    // Change the live tree afterwards; the snapshot keeps the old view.
    meta.create(
        &actor,
        ws.id,
        comp.ino,
        &drive::model::Name::parse("v2.exr").expect("name"),
        &NewNode::new(NodeKind::File, 0o644),
    )
    .await
    .expect("another file");
    let snap = meta.get_snapshot(ws.id, "review-1").await.expect("snapshot");
    let in_snapshot: Vec<String> = meta
        .readdir(View::At(snap.epoch), snap.root, None, 100)
        .await
        .expect("readdir snapshot")
        .into_iter()
        .map(|e| e.name.to_string_lossy())
        .collect();
    assert_eq!(in_snapshot, ["v1.exr"]);

    // Reconciling again does not re-take it.
    let status = p.status.clone();
    let input = snap_plan::Input {
        status: Some(&status),
        ..input
    };
    let again = reconcile::sync(&Snapshots, &store, &input, at(3))
        .await
        .expect("sync again");
    assert_eq!(again.status.snapshot_id, status.snapshot_id);
    assert_eq!(again.status.files, Some(1));

    reconcile::cleanup(&Snapshots, &store, &input)
        .await
        .expect("release");
    assert_eq!(
        meta.get_snapshot(ws.id, "review-1")
            .await
            .expect_err("released")
            .kind(),
        drive::ErrorKind::NotFound
    );
}

#[tokio::test]
async fn share_grants_are_stored_and_an_expired_share_is_revoked() {
    let (meta, store) = store_on(PgServer::shared()).await;
    let w = workspace(
        "studio",
        "shot030",
        workspace_spec(WorkspaceKind::Team, DeletionPolicy::Retain),
    );
    reconcile::sync(&Workspaces(NO_KEYS), &store, &ws_input(&w), at(1))
        .await
        .expect("create workspace");
    let ws = meta.get_workspace("studio.shot030").await.expect("ws");
    let sh = share("studio", "farm-write", "shot030", Some(at(1_000)));
    let input = share_plan::Input {
        namespace: "studio",
        name: "farm-write",
        generation: 1,
        spec: &sh.spec,
        status: None,
    };
    let p = reconcile::sync(&Shares, &store, &input, at(100))
        .await
        .expect("grant");
    assert!(conditions::is_true(&p.status.conditions, "Ready"));
    let stored = meta.list_shares(ws.id).await.expect("shares");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].path, "/comp");
    assert_eq!(stored[0].permission, drive::model::Permission::Write);
    let mut subjects = stored[0].subjects.clone();
    subjects.sort();
    assert_eq!(subjects, ["Group:review", "ServiceAccount:farm/render"]);

    // After expiry the grant is revoked and the status says so.
    let expired = reconcile::sync(&Shares, &store, &input, at(2_000))
        .await
        .expect("expire");
    assert!(expired.status.expired);
    assert_eq!(
        conditions::find(&expired.status.conditions, "Ready").map(|c| c.reason.as_str()),
        Some("Expired")
    );
    assert!(meta.list_shares(ws.id).await.expect("shares").is_empty());
}

#[tokio::test]
async fn store_down_reports_unavailable_and_a_deleted_workspace_finishes_cleanup_later() {
    // Its own server: this test stops it.
    let pg = PgServer::start().expect("start PostgreSQL");
    let (meta, store) = store_on(&pg).await;
    let w = workspace(
        "studio",
        "outage",
        workspace_spec(WorkspaceKind::User, DeletionPolicy::Delete),
    );
    reconcile::sync(&Workspaces(NO_KEYS), &store, &ws_input(&w), at(1))
        .await
        .expect("create");

    pg.stop().expect("stop PostgreSQL");
    let err = reconcile::sync(&Workspaces(NO_KEYS), &store, &ws_input(&w), at(2))
        .await
        .expect_err("store down");
    assert!(
        matches!(&err, ReconcileError::Store(e) if e.kind == StoreErrorKind::Unavailable),
        "{err:?}"
    );
    let conds = operator::reconcile::failed_conditions(
        &[],
        match &err {
            ReconcileError::Store(e) => e,
            _ => unreachable!(),
        },
        1,
        at(2),
    );
    assert_eq!(
        conditions::find(&conds, "Ready").map(|c| c.reason.as_str()),
        Some("StoreUnavailable")
    );
    assert!(
        reconcile::cleanup(&Workspaces(NO_KEYS), &store, &ws_input(&w))
            .await
            .is_err(),
        "cleanup must fail while the store is down"
    );

    pg.resume().expect("restart PostgreSQL");
    let ops = reconcile::cleanup(&Workspaces(NO_KEYS), &store, &ws_input(&w))
        .await
        .expect("cleanup after recovery");
    assert_eq!(ops.len(), 1);
    assert!(store.get_workspace("studio.outage").await.expect("get").is_none());
    assert_eq!(
        meta.get_workspace("studio.outage")
            .await
            .expect_err("deleted")
            .kind(),
        drive::ErrorKind::NotFound
    );
}

fn encrypted(mut w: operator::crd::Workspace, secret: &str, key: &str) -> operator::crd::Workspace {
    w.spec.encryption = Some(Encryption {
        enabled: true,
        key_secret_ref: Some(SecretKeyRef {
            name: secret.into(),
            key: key.into(),
        }),
    });
    w
}

#[tokio::test]
async fn encrypted_workspace_stores_a_data_key_wrapped_with_the_secret_kek() {
    let (meta, store) = store_on(PgServer::shared()).await;
    let kek = Kek::generate();
    let keys = StaticKeySource::default().with("studio", "shot040-kek", "key", format!("{}\n", kek.to_hex()));
    let w = encrypted(
        workspace(
            "studio",
            "shot040",
            workspace_spec(WorkspaceKind::Team, DeletionPolicy::Retain),
        ),
        "shot040-kek",
        "key",
    );
    let p = reconcile::sync(&Workspaces(&keys), &store, &ws_input(&w), at(1))
        .await
        .expect("create");
    assert!(
        conditions::is_true(&p.status.conditions, "Ready"),
        "{:?}",
        p.status.conditions
    );
    assert_eq!(p.events.iter().map(|e| e.reason).collect::<Vec<_>>(), ["Created"]);

    let stored = meta.get_workspace("studio.shot040").await.expect("created");
    assert!(stored.encrypted);
    let wrapped = stored.wrapped_key.clone().expect("a wrapped data key");
    DataKey::unwrap(&wrapped, &kek).expect("the data key unwraps with the Secret's KEK");
    assert!(
        matches!(
            DataKey::unwrap(&wrapped, &Kek::generate()),
            Err(KeyError::WrongKek)
        ),
        "another KEK is refused"
    );

    // Once created, the Secret is not needed (the store holds the wrapped key): a reconcile
    // without it changes nothing and stays Ready.
    let mut w = w;
    w.status = Some(p.status.clone());
    let again = reconcile::sync(&Workspaces(NO_KEYS), &store, &ws_input(&w), at(2))
        .await
        .expect("sync again");
    assert_eq!(again.status, p.status);
    let after = meta.get_workspace("studio.shot040").await.expect("still there");
    assert_eq!(
        after.wrapped_key.as_deref(),
        Some(wrapped.as_slice()),
        "the data key is never re-generated"
    );

    // A raw 32-byte key works as well as hex.
    let raw = Kek::generate();
    let raw_bytes: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&raw.to_hex()[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    let keys = StaticKeySource::default().with("studio", "raw-kek", "kek.bin", raw_bytes);
    let w2 = encrypted(
        workspace(
            "studio",
            "shot041",
            workspace_spec(WorkspaceKind::User, DeletionPolicy::Retain),
        ),
        "raw-kek",
        "kek.bin",
    );
    reconcile::sync(&Workspaces(&keys), &store, &ws_input(&w2), at(3))
        .await
        .expect("create with a raw key");
    let stored = meta.get_workspace("studio.shot041").await.expect("created");
    DataKey::unwrap(&stored.wrapped_key.expect("wrapped"), &raw).expect("unwraps with the raw KEK");
}

#[tokio::test]
async fn encrypted_workspace_without_its_secret_or_with_a_bad_key_is_not_created() {
    let (meta, store) = store_on(PgServer::shared()).await;
    let mut w = encrypted(
        workspace(
            "studio",
            "shot050",
            workspace_spec(WorkspaceKind::Team, DeletionPolicy::Retain),
        ),
        "shot050-kek",
        "key",
    );
    let missing = |meta: PgMetaStore| async move {
        assert_eq!(
            meta.get_workspace("studio.shot050")
                .await
                .expect_err("not created")
                .kind(),
            drive::ErrorKind::NotFound
        );
    };

    // No Secret.
    let p = reconcile::sync(&Workspaces(NO_KEYS), &store, &ws_input(&w), at(1))
        .await
        .expect("no store error");
    let ready = conditions::find(&p.status.conditions, "Ready").expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "KeySecretMissing")
    );
    assert!(
        ready.message.contains("Secret studio/shot050-kek does not exist"),
        "{}",
        ready.message
    );
    assert_eq!(
        p.requeue,
        Some(std::time::Duration::from_secs(30)),
        "rechecked: Secrets are not watched"
    );
    assert!(
        matches!(&p.events[..], [e] if e.warning && e.reason == "KeySecretMissing"),
        "{:?}",
        p.events
    );
    assert_eq!(p.status.workspace_id, None);
    missing(meta.clone()).await;

    // Still missing: no second warning event.
    w.status = Some(p.status.clone());
    let quiet = reconcile::sync(&Workspaces(NO_KEYS), &store, &ws_input(&w), at(2))
        .await
        .expect("sync");
    assert!(quiet.events.is_empty(), "{:?}", quiet.events);
    assert_eq!(quiet.status, p.status);

    // The Secret exists without the key.
    let keys = StaticKeySource::default().with("studio", "shot050-kek", "other", Kek::generate().to_hex());
    let p = reconcile::sync(&Workspaces(&keys), &store, &ws_input(&w), at(3))
        .await
        .expect("sync");
    let ready = conditions::find(&p.status.conditions, "Ready").expect("Ready");
    assert_eq!(ready.reason, "KeySecretMissing");
    assert!(ready.message.contains("has no key \"key\""), "{}", ready.message);
    missing(meta.clone()).await;

    // The key is not a KEK: InvalidKey, and the value appears nowhere.
    let secret_value = "swordfish-is-not-a-kek";
    let keys = StaticKeySource::default().with("studio", "shot050-kek", "key", secret_value);
    let p = reconcile::sync(&Workspaces(&keys), &store, &ws_input(&w), at(4))
        .await
        .expect("sync");
    let ready = conditions::find(&p.status.conditions, "Ready").expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "InvalidKey")
    );
    assert!(
        ready
            .message
            .contains("expected 32 raw bytes or 64 hex digits, found 22 bytes"),
        "{}",
        ready.message
    );
    assert!(
        matches!(&p.events[..], [e] if e.warning && e.reason == "InvalidKey"),
        "{:?}",
        p.events
    );
    let shown = format!("{:?} {:?}", p.status, p.events);
    assert!(!shown.contains("swordfish"), "the Secret's value leaked: {shown}");
    missing(meta.clone()).await;

    // Fixed: created, Ready, and the data key unwraps with the KEK.
    let kek = Kek::generate();
    let keys = StaticKeySource::default().with("studio", "shot050-kek", "key", kek.to_hex());
    let p = reconcile::sync(&Workspaces(&keys), &store, &ws_input(&w), at(5))
        .await
        .expect("create");
    assert!(conditions::is_true(&p.status.conditions, "Ready"));
    let stored = meta.get_workspace("studio.shot050").await.expect("created");
    DataKey::unwrap(&stored.wrapped_key.expect("wrapped"), &kek).expect("unwraps");
}

#[tokio::test]
async fn the_adapter_refuses_an_encrypted_workspace_without_a_kek_and_creates_nothing() {
    let (meta, store) = store_on(PgServer::shared()).await;
    let new = NewWorkspace {
        name: "studio.nokek".into(),
        kind: WorkspaceKind::User,
        block_size: 4 << 20,
        encrypted: true,
        quota_bytes: None,
        owners: Vec::new(),
        object_store: None,
    };
    let err = store.create_workspace(&new, None).await.expect_err("needs a KEK");
    assert_eq!(err.kind, StoreErrorKind::Invalid);
    assert!(err.to_string().contains("key-encryption key"), "{err}");
    assert_eq!(
        meta.get_workspace("studio.nokek")
            .await
            .expect_err("absent")
            .kind(),
        drive::ErrorKind::NotFound
    );

    // An unencrypted workspace ignores a KEK: no wrapped key is stored.
    let plain = NewWorkspace {
        name: "studio.plain".into(),
        encrypted: false,
        ..new
    };
    let record = store
        .create_workspace(&plain, Some(&Kek::generate()))
        .await
        .expect("create");
    assert!(!record.encrypted);
    assert_eq!(
        meta.get_workspace("studio.plain").await.expect("get").wrapped_key,
        None
    );
}

// Catches: `spec.objectStore` not recorded (every tenant's blocks in the node's store), the
// credentials Secret recorded with it, a prefix kept with its slashes, and a changed location
// applied or ignored instead of reported (blocks already stored would be orphaned).
#[tokio::test]
async fn the_object_store_location_is_recorded_at_creation_and_never_changed() {
    let (meta, store) = store_on(PgServer::shared()).await;
    let mut w = workspace(
        "studio",
        "tenant",
        workspace_spec(WorkspaceKind::Team, DeletionPolicy::Retain),
    );
    w.spec.object_store = Some(operator::crd::ObjectStoreRef {
        bucket: "tenant-a".into(),
        prefix: "/studio/tenant/".into(),
        endpoint: Some("http://127.0.0.1:9000".into()),
        region: Some("eu-west-1".into()),
        credentials_secret_ref: Some(operator::crd::SecretRef {
            name: "tenant-s3".into(),
        }),
    });
    let first = reconcile::sync(&Workspaces(NO_KEYS), &store, &ws_input(&w), at(1))
        .await
        .expect("create");
    assert!(conditions::is_true(&first.status.conditions, "Ready"));
    let recorded = drive::model::ObjectStoreLocation {
        bucket: "tenant-a".into(),
        prefix: "studio/tenant".into(),
        endpoint: Some("http://127.0.0.1:9000".into()),
        region: Some("eu-west-1".into()),
    };
    let stored = meta.get_workspace("studio.tenant").await.expect("created");
    assert_eq!(stored.object_store.as_ref(), Some(&recorded));

    // A change that slipped past CEL is reported, and the store keeps the first location.
    w.spec.object_store.as_mut().expect("set").bucket = "tenant-b".into();
    assert_invalid_spec(&store, &w, "objectStore").await;
    let stored = meta.get_workspace("studio.tenant").await.expect("still there");
    assert_eq!(stored.object_store, Some(recorded));

    // A workspace without one records none: its blocks go to the mounting node's store.
    let plain = workspace(
        "studio",
        "plain",
        workspace_spec(WorkspaceKind::User, DeletionPolicy::Retain),
    );
    reconcile::sync(&Workspaces(NO_KEYS), &store, &ws_input(&plain), at(3))
        .await
        .expect("create");
    assert_eq!(
        meta.get_workspace("studio.plain")
            .await
            .expect("created")
            .object_store,
        None
    );
}

// Catches: a Snapshot with publishFrom that only snapshots (the folder left in its working
// place, no `published` event), a publish taken twice (a second reconcile failing on the
// moved-away source, or publishing again), and overlapping folders reaching the store.
#[tokio::test]
async fn a_snapshot_with_publish_from_moves_the_folder_and_snapshots_it_once() {
    let (meta, store) = store_on(PgServer::shared()).await;
    let w = workspace(
        "studio",
        "shot030",
        workspace_spec(WorkspaceKind::Team, DeletionPolicy::Retain),
    );
    reconcile::sync(&Workspaces(NO_KEYS), &store, &ws_input(&w), at(1))
        .await
        .expect("create workspace");
    let ws = meta.get_workspace("studio.shot030").await.expect("ws");
    let actor = Actor::system("test");
    let mkdir = |parent, name: &'static str| {
        let meta = meta.clone();
        let actor = actor.clone();
        async move {
            meta.create(
                &actor,
                ws.id,
                parent,
                &drive::model::Name::parse(name).expect("name"),
                &NewNode::new(NodeKind::Directory, 0o755),
            )
            .await
            .expect("mkdir")
        }
    };
    let wip = mkdir(ws.root, "wip").await;
    let comp = mkdir(wip.ino, "comp").await;
    mkdir(ws.root, "published").await;
    for frame in ["c.1001.exr", "c.1002.exr"] {
        meta.create(
            &actor,
            ws.id,
            comp.ino,
            &drive::model::Name::parse(frame).expect("name"),
            &NewNode::new(NodeKind::File, 0o644),
        )
        .await
        .expect("file");
    }
    let before = meta.events_after(Some(ws.id), 0, 1000).await.expect("events");
    let after = before.last().map_or(0, |e| e.id);

    let mut s = snapshot("studio", "comp-v1", "shot030", "/published/comp");
    s.spec.publish_from = Some(operator::crd::PublishFrom {
        path: "/wip/comp".into(),
        mode: operator::crd::PublishModeSpec::Move,
        merge: operator::crd::MergeModeSpec::Fail,
    });
    let input = snap_plan::Input {
        namespace: "studio",
        name: "comp-v1",
        generation: 1,
        spec: &s.spec,
        status: None,
    };
    let p = reconcile::sync(&Snapshots, &store, &input, at(2))
        .await
        .expect("publish");
    assert!(p.status.ready_to_use, "{:?}", p.status);
    assert_eq!(p.status.files, Some(2));
    assert!(
        p.events.iter().any(|e| e.note.contains("published")),
        "{:?}",
        p.events
    );
    // Moved into place; the working folder is gone; one `published` event names the snapshot.
    let published = meta
        .resolve(ws.id, "/published/comp/c.1002.exr")
        .await
        .expect("published file");
    assert_eq!(published.kind, NodeKind::File);
    assert_eq!(
        meta.resolve(ws.id, "/wip/comp").await.expect_err("moved").kind(),
        drive::ErrorKind::NotFound
    );
    let events = meta.events_after(Some(ws.id), after, 1000).await.expect("events");
    let ops: Vec<(&str, Option<&str>)> = events
        .iter()
        .map(|e| (e.op.as_str(), e.snapshot.as_deref()))
        .collect();
    assert_eq!(ops, [("published", Some("comp-v1"))]);

    // A second reconcile finds the snapshot and publishes nothing more.
    let status = p.status.clone();
    let input = snap_plan::Input {
        status: Some(&status),
        ..input
    };
    let again = reconcile::sync(&Snapshots, &store, &input, at(3))
        .await
        .expect("sync again");
    assert!(again.status.ready_to_use);
    assert_eq!(
        meta.events_after(Some(ws.id), after, 1000)
            .await
            .expect("events")
            .len(),
        1
    );

    // Overlapping folders are an invalid spec; nothing reaches the store.
    let mut bad = snapshot("studio", "comp-v2", "shot030", "/published/comp/inner");
    bad.spec.publish_from = s.spec.publish_from.clone().map(|mut f| {
        f.path = "/published".into();
        f
    });
    let input = snap_plan::Input {
        namespace: "studio",
        name: "comp-v2",
        generation: 1,
        spec: &bad.spec,
        status: None,
    };
    let p = reconcile::sync(&Snapshots, &store, &input, at(4))
        .await
        .expect("sync");
    let ready = conditions::find(&p.status.conditions, "Ready").expect("Ready");
    assert_eq!(ready.reason, conditions::reason::INVALID_SPEC);
    assert!(ready.message.contains("separate folders"), "{}", ready.message);
    assert_eq!(
        meta.get_snapshot(ws.id, "comp-v2")
            .await
            .expect_err("not taken")
            .kind(),
        drive::ErrorKind::NotFound
    );
}
