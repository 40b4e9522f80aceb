//! Snapshot and Share reconciles against kube's mock API server (tower-test) over the
//! in-memory store: the status each writes, the events, the wait for a missing Workspace, and
//! the store cleanup behind the finalizer on deletion. The clock is at t = 1000 s.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::mock::{context, expect};
use common::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use operator::crd::{
    DeletionPolicy, Share, ShareStatus, Snapshot, SnapshotStatus, WorkspaceKind, conditions,
};
use operator::reconcile::{Shares, Snapshots, Workspaces, reconcile, sync};
use operator::store::StudioStore;
use operator::store::memory::MemoryStore;
use serde_json::json;

const SNAP: &str = "/apis/studiodrive.dev/v1alpha1/namespaces/studio/snapshots/review-1";
const SHARE: &str = "/apis/studiodrive.dev/v1alpha1/namespaces/studio/shares/farm-write";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/studio/events";

fn finalized<T>(mut obj: T, meta: impl FnOnce(&mut T) -> &mut kube::api::ObjectMeta) -> T {
    meta(&mut obj).finalizers = Some(vec!["studiodrive.dev/cleanup".into()]);
    obj
}

fn snap() -> Snapshot {
    finalized(snapshot("studio", "review-1", "shot010", "/comp"), |s| {
        &mut s.metadata
    })
}

fn grant() -> Share {
    finalized(share("studio", "farm-write", "shot010", Some(at(5_000))), |s| {
        &mut s.metadata
    })
}

async fn with_workspace(store: &MemoryStore) {
    let w = workspace(
        "studio",
        "shot010",
        workspace_spec(WorkspaceKind::Team, DeletionPolicy::Retain),
    );
    let input = operator::plan::workspace::Input {
        namespace: "studio",
        name: "shot010",
        generation: 1,
        spec: &w.spec,
        status: None,
    };
    sync(&Workspaces(NO_KEYS), store, &input, at(1))
        .await
        .expect("workspace");
}

fn requeue(action: &Action, after: Duration) {
    assert_eq!(format!("{action:?}"), format!("{:?}", Action::requeue(after)));
}

#[tokio::test]
async fn a_snapshot_of_a_missing_workspace_reports_workspace_not_found_and_waits() {
    let (ctx, mut handle) = context();
    let server = async {
        let (_, body) = expect(
            &mut handle,
            "PATCH",
            &format!("{SNAP}/status"),
            &serde_json::to_value(snap()).expect("json"),
        )
        .await;
        let status: SnapshotStatus = serde_json::from_value(body["status"].clone()).expect("status");
        assert!(!status.ready_to_use);
        let ready = conditions::find(&status.conditions, "Ready").expect("Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "WorkspaceNotFound")
        );
        assert!(ready.message.contains("studio.shot010"), "{}", ready.message);
    };
    let (result, ()) = tokio::join!(reconcile::<Snapshots, _>(Arc::new(snap()), ctx.clone()), server);
    requeue(&result.expect("reconcile"), Duration::from_secs(30));
    assert_eq!(ctx.store.writes(), 0);
}

#[tokio::test]
async fn a_snapshot_is_taken_then_its_status_is_applied_and_a_created_event_posted() {
    let (ctx, mut handle) = context();
    with_workspace(&ctx.store).await;
    let server = async {
        let (query, body) = expect(
            &mut handle,
            "PATCH",
            &format!("{SNAP}/status"),
            &serde_json::to_value(snap()).expect("json"),
        )
        .await;
        assert!(
            query.contains("fieldManager=studiodrive") && query.contains("force=true"),
            "{query}"
        );
        assert_eq!(body["kind"], "Snapshot");
        let status: SnapshotStatus = serde_json::from_value(body["status"].clone()).expect("status");
        assert!(status.ready_to_use);
        assert!(status.snapshot_id.is_some());
        assert!(conditions::is_true(&status.conditions, "Ready"));
        let (_, event) = expect(&mut handle, "POST", EVENTS, &json!({})).await;
        assert_eq!(
            (event["reason"].as_str(), event["regarding"]["kind"].as_str()),
            (Some("Created"), Some("Snapshot"))
        );
    };
    let (result, ()) = tokio::join!(reconcile::<Snapshots, _>(Arc::new(snap()), ctx.clone()), server);
    result.expect("reconcile");
    let taken = ctx
        .store
        .get_snapshot("studio.shot010", "review-1")
        .await
        .expect("get")
        .expect("taken");
    assert_eq!(taken.path, "/comp");
}

#[tokio::test]
async fn deleting_a_snapshot_releases_it_then_removes_the_finalizer() {
    let (ctx, mut handle) = context();
    with_workspace(&ctx.store).await;
    ctx.store
        .create_snapshot("studio.shot010", "review-1", "/comp")
        .await
        .expect("snapshot");
    let mut deleting = snap();
    deleting.metadata.deletion_timestamp = Some(Time(at(900)));
    let server = async {
        let (_, event) = expect(&mut handle, "POST", EVENTS, &json!({})).await;
        assert_eq!(event["reason"], "Released");
        let mut gone = deleting.clone();
        gone.metadata.finalizers = None;
        let (_, patch) = expect(
            &mut handle,
            "PATCH",
            SNAP,
            &serde_json::to_value(gone).expect("json"),
        )
        .await;
        let ops = patch.as_array().expect("JSON patch").clone();
        assert!(
            ops.iter()
                .any(|op| op["op"] == "remove" && op["path"] == "/metadata/finalizers/0"),
            "{ops:?}"
        );
    };
    let (result, ()) = tokio::join!(
        reconcile::<Snapshots, _>(Arc::new(deleting.clone()), ctx.clone()),
        server
    );
    result.expect("cleanup");
    assert!(
        ctx.store
            .get_snapshot("studio.shot010", "review-1")
            .await
            .expect("get")
            .is_none()
    );
}

#[tokio::test]
async fn a_share_is_granted_with_status_and_a_granted_event_and_wakes_up_for_expiry() {
    let (ctx, mut handle) = context();
    with_workspace(&ctx.store).await;
    let server = async {
        let (_, body) = expect(
            &mut handle,
            "PATCH",
            &format!("{SHARE}/status"),
            &serde_json::to_value(grant()).expect("json"),
        )
        .await;
        assert_eq!(body["kind"], "Share");
        let status: ShareStatus = serde_json::from_value(body["status"].clone()).expect("status");
        assert!(!status.expired);
        assert!(
            conditions::is_true(&status.conditions, "Ready"),
            "{:?}",
            status.conditions
        );
        let (_, event) = expect(&mut handle, "POST", EVENTS, &json!({})).await;
        assert_eq!(event["reason"], "Granted");
        let note = event["note"].as_str().unwrap_or_default();
        assert!(
            note.contains("ServiceAccount:farm/render") && note.contains("/comp"),
            "{note}"
        );
    };
    let (result, ()) = tokio::join!(reconcile::<Shares, _>(Arc::new(grant()), ctx.clone()), server);
    requeue(&result.expect("reconcile"), Duration::from_secs(300));
    let stored = ctx
        .store
        .get_share("studio.shot010", "farm-write")
        .await
        .expect("get")
        .expect("granted");
    assert_eq!(stored.subjects, ["Group:review", "ServiceAccount:farm/render"]);
    assert_eq!(stored.expires_at, Some(at(5_000)));
}

#[tokio::test]
async fn deleting_a_share_revokes_the_grant_then_removes_the_finalizer() {
    let (ctx, mut handle) = context();
    with_workspace(&ctx.store).await;
    // Grant it through a first reconcile.
    let server = async {
        expect(
            &mut handle,
            "PATCH",
            &format!("{SHARE}/status"),
            &serde_json::to_value(grant()).expect("json"),
        )
        .await;
        expect(&mut handle, "POST", EVENTS, &json!({})).await;
    };
    let (result, ()) = tokio::join!(reconcile::<Shares, _>(Arc::new(grant()), ctx.clone()), server);
    result.expect("grant");

    let mut deleting = grant();
    deleting.metadata.deletion_timestamp = Some(Time(at(950)));
    let server = async {
        let (_, event) = expect(&mut handle, "POST", EVENTS, &json!({})).await;
        assert_eq!(event["reason"], "Revoked");
        let mut gone = deleting.clone();
        gone.metadata.finalizers = None;
        let (_, patch) = expect(
            &mut handle,
            "PATCH",
            SHARE,
            &serde_json::to_value(gone).expect("json"),
        )
        .await;
        assert!(
            patch
                .as_array()
                .expect("JSON patch")
                .iter()
                .any(|op| op["op"] == "remove"),
            "{patch}"
        );
    };
    let (result, ()) = tokio::join!(
        reconcile::<Shares, _>(Arc::new(deleting.clone()), ctx.clone()),
        server
    );
    result.expect("cleanup");
    assert_eq!(
        ctx.store
            .get_share("studio.shot010", "farm-write")
            .await
            .expect("get"),
        None
    );
}

#[tokio::test]
async fn a_store_outage_during_a_share_reconcile_writes_store_unavailable_and_fails() {
    let (ctx, mut handle) = context();
    ctx.store.set_available(false);
    let server = async {
        let (_, body) = expect(
            &mut handle,
            "PATCH",
            &format!("{SHARE}/status"),
            &serde_json::to_value(grant()).expect("json"),
        )
        .await;
        let status: ShareStatus = serde_json::from_value(body["status"].clone()).expect("status");
        let ready = conditions::find(&status.conditions, "Ready").expect("Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "StoreUnavailable")
        );
        assert!(conditions::is_true(&status.conditions, "Degraded"));
    };
    let (result, ()) = tokio::join!(reconcile::<Shares, _>(Arc::new(grant()), ctx.clone()), server);
    assert_eq!(result.expect_err("store down").label(), "store_unavailable");
}

#[tokio::test]
async fn the_error_policy_backs_off_per_object_and_a_success_resets_it() {
    let (ctx, _handle) = context();
    let err = operator::reconcile::ReconcileError::MissingField("namespace");
    let a = Arc::new(snap());
    let mut other = snap();
    other.metadata.name = Some("review-2".into());
    let b = Arc::new(other);
    let policy = operator::reconcile::error_policy::<Snapshot, MemoryStore>;
    requeue(&policy(a.clone(), &err, ctx.clone()), Duration::from_secs(5));
    requeue(&policy(a.clone(), &err, ctx.clone()), Duration::from_secs(10));
    requeue(&policy(b.clone(), &err, ctx.clone()), Duration::from_secs(5));
    ctx.backoff.succeed("studio/review-1");
    requeue(&policy(a, &err, ctx.clone()), Duration::from_secs(5));
    requeue(&policy(b, &err, ctx), Duration::from_secs(10));
}
