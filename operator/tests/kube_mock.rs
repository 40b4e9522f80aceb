//! Kubernetes API interactions against kube's mock service (tower-test): the exact requests a
//! reconcile sends for the finalizer, the status and events, and that a reconcile of an
//! unchanged object sends nothing.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::mock::{context, expect, expect_status};
use common::*;
use drive::data::{DataKey, Kek};
use http::Response;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use operator::crd::{
    DeletionPolicy, Encryption, SecretKeyRef, Workspace, WorkspaceKind, WorkspaceStatus, conditions,
};
use operator::metrics::Metrics;
use operator::reconcile::{Workspaces, reconcile, sync};
use serde_json::Value;

fn ws_with_finalizer() -> Workspace {
    let mut w = workspace(
        "studio",
        "shot010",
        workspace_spec(WorkspaceKind::Team, DeletionPolicy::Delete),
    );
    w.metadata.finalizers = Some(vec!["studiodrive.dev/cleanup".into()]);
    w
}

const WS_PATH: &str = "/apis/studiodrive.dev/v1alpha1/namespaces/studio/workspaces/shot010";

#[tokio::test]
async fn first_reconcile_adds_the_finalizer_with_a_guarded_json_patch() {
    let (ctx, mut handle) = context();
    let w = workspace(
        "studio",
        "shot010",
        workspace_spec(WorkspaceKind::Team, DeletionPolicy::Delete),
    );
    let reply = serde_json::to_value(ws_with_finalizer()).expect("json");
    let server = async {
        let (_, body) = expect(&mut handle, "PATCH", WS_PATH, &reply).await;
        let ops = body.as_array().expect("a JSON patch").clone();
        assert!(
            ops.iter().any(|op| op["op"] == "test"),
            "the patch is guarded by a test op: {ops:?}"
        );
        assert!(
            ops.iter()
                .any(|op| op["op"] == "add" && op["value"].to_string().contains("studiodrive.dev/cleanup")),
            "{ops:?}"
        );
    };
    let (result, ()) = tokio::join!(reconcile::<Workspaces, _>(Arc::new(w), ctx.clone()), server);
    result.expect("reconcile");
    assert!(
        ctx.store.workspace("studio.shot010").is_none(),
        "nothing is created before the finalizer is in place"
    );
}

#[tokio::test]
async fn reconcile_creates_then_patches_status_by_apply_then_posts_an_event_and_then_goes_quiet() {
    let (ctx, mut handle) = context();
    let w = ws_with_finalizer();
    let mut status_sent = Value::Null;
    let server = async {
        let (query, body) = expect(
            &mut handle,
            "PATCH",
            &format!("{WS_PATH}/status"),
            &serde_json::to_value(ws_with_finalizer()).expect("json"),
        )
        .await;
        assert!(
            query.contains("fieldManager=studiodrive") && query.contains("force=true"),
            "server-side apply: {query}"
        );
        assert_eq!(body["kind"], "Workspace");
        assert_eq!(body["apiVersion"], "studiodrive.dev/v1alpha1");
        status_sent = body["status"].clone();
        let (_, event) = expect(
            &mut handle,
            "POST",
            "/apis/events.k8s.io/v1/namespaces/studio/events",
            &serde_json::json!({}),
        )
        .await;
        assert_eq!(event["reason"], "Created");
        assert_eq!(event["type"], "Normal");
        assert_eq!(event["regarding"]["name"], "shot010");
        assert_eq!(event["reportingController"], "studiodrive-operator");
    };
    let (result, ()) = tokio::join!(
        reconcile::<Workspaces, _>(Arc::new(w.clone()), ctx.clone()),
        server
    );
    result.expect("reconcile");
    assert!(ctx.store.workspace("studio.shot010").is_some());
    assert_eq!(status_sent["workspaceName"], "studio.shot010");
    assert_eq!(status_sent["observedGeneration"], 1);
    let status: operator::crd::WorkspaceStatus = serde_json::from_value(status_sent).expect("status");
    assert!(conditions::is_true(&status.conditions, "Ready"));

    // The same object with the status it now has: no request at all.
    let mut settled = w;
    settled.status = Some(status);
    tokio::select! {
        biased;
        result = reconcile::<Workspaces, _>(Arc::new(settled), ctx.clone()) => { result.expect("quiet reconcile"); }
        request = handle.next_request() => panic!("unexpected request {:?}", request.map(|(r, _)| r.uri().clone())),
    }
}

#[tokio::test]
async fn deletion_while_the_store_is_down_keeps_the_finalizer_then_removes_it_after_recovery() {
    let (ctx, mut handle) = context();
    let mut w = ws_with_finalizer();
    // Create it in the store first.
    ctx.store.set_available(true);
    sync(
        &Workspaces(NO_KEYS),
        &ctx.store,
        &operator::plan::workspace::Input {
            namespace: "studio",
            name: "shot010",
            generation: 1,
            spec: &w.spec,
            status: None,
        },
        at(1),
    )
    .await
    .expect("create");
    w.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(500)));
    let w = Arc::new(w);

    ctx.store.set_available(false);
    tokio::select! {
        biased;
        result = reconcile::<Workspaces, _>(w.clone(), ctx.clone()) => {
            let err = result.expect_err("cleanup must fail while the store is down");
            assert_eq!(err.label(), "store_unavailable");
        }
        request = handle.next_request() => panic!("no request may be sent (the finalizer stays): {:?}", request.map(|(r, _)| r.uri().clone())),
    }
    assert!(ctx.store.workspace("studio.shot010").is_some());

    ctx.store.set_available(true);
    let server = async {
        let (_, event) = expect(
            &mut handle,
            "POST",
            "/apis/events.k8s.io/v1/namespaces/studio/events",
            &serde_json::json!({}),
        )
        .await;
        assert_eq!(event["reason"], "Deleted");
        let mut gone = (*w).clone();
        gone.metadata.finalizers = None;
        let (_, patch) = expect(
            &mut handle,
            "PATCH",
            WS_PATH,
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
    let (result, ()) = tokio::join!(reconcile::<Workspaces, _>(w.clone(), ctx.clone()), server);
    result.expect("cleanup after recovery");
    assert!(
        ctx.store.workspace("studio.shot010").is_none(),
        "Delete policy soft-deletes"
    );
}

#[tokio::test]
async fn metrics_endpoint_serves_metrics_and_health() {
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    metrics.observe("Workspace", 0.02, Some("store_unavailable"));
    let state = operator::http::HealthState {
        metrics,
        ready: false.into(),
    };
    let body = |r: Response<http_body_util::Full<hyper::body::Bytes>>| r.status().as_u16();
    assert_eq!(
        body(operator::http::respond(&state, &http::Method::GET, "/healthz")),
        200
    );
    assert_eq!(
        body(operator::http::respond(&state, &http::Method::GET, "/readyz")),
        503
    );
    state.ready.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        body(operator::http::respond(&state, &http::Method::GET, "/readyz")),
        200
    );
    let text = state.metrics.render();
    assert!(
        text.contains("studiodrive_reconciles_total{kind=\"Workspace\",result=\"error\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(
            "studiodrive_reconcile_errors_total{kind=\"Workspace\",reason=\"store_unavailable\"} 1"
        )
    );
    assert!(text.contains("studiodrive_reconcile_duration_seconds_bucket"));
    assert!(text.contains("studiodrive_operator_leader 0"));
}

const SECRET_PATH: &str = "/api/v1/namespaces/studio/secrets/shot010-kek";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/studio/events";

fn encrypted_ws() -> Workspace {
    let mut w = ws_with_finalizer();
    w.spec.encryption = Some(Encryption {
        enabled: true,
        key_secret_ref: Some(SecretKeyRef {
            name: "shot010-kek".into(),
            key: "kek".into(),
        }),
    });
    w
}

fn secret_with(key: &str, value: &[u8]) -> Value {
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("shot010-kek".into()),
            namespace: Some("studio".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(key.to_string(), ByteString(value.to_vec()))])),
        ..Secret::default()
    };
    serde_json::to_value(secret).expect("json")
}

fn not_found() -> Value {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "secrets \"shot010-kek\" not found", "reason": "NotFound", "code": 404,
    })
}

fn ready(status: &Value) -> (String, String, String) {
    let status: WorkspaceStatus = serde_json::from_value(status.clone()).expect("status");
    let c = conditions::find(&status.conditions, "Ready")
        .expect("Ready")
        .clone();
    (c.status, c.reason, c.message)
}

#[tokio::test]
async fn encrypted_workspace_reads_its_key_secret_and_is_created_with_a_wrapped_data_key() {
    let (ctx, mut handle) = context();
    let kek = Kek::generate();
    let hex = kek.to_hex();
    let mut sent = String::new();
    let server = async {
        let (_, get) = expect(
            &mut handle,
            "GET",
            SECRET_PATH,
            &secret_with("kek", hex.as_bytes()),
        )
        .await;
        assert_eq!(get, Value::Null, "a GET has no body");
        let (_, status) = expect(
            &mut handle,
            "PATCH",
            &format!("{WS_PATH}/status"),
            &serde_json::to_value(encrypted_ws()).expect("json"),
        )
        .await;
        let (ready_status, why, _) = ready(&status["status"]);
        assert_eq!((ready_status.as_str(), why.as_str()), ("True", "Reconciled"));
        let (_, event) = expect(&mut handle, "POST", EVENTS_PATH, &serde_json::json!({})).await;
        assert_eq!(event["reason"], "Created");
        sent = format!("{status} {event}");
    };
    let (result, ()) = tokio::join!(
        reconcile::<Workspaces, _>(Arc::new(encrypted_ws()), ctx.clone()),
        server
    );
    result.expect("reconcile");
    let record = ctx.store.workspace("studio.shot010").expect("created");
    assert!(record.encrypted);
    let wrapped = ctx
        .store
        .wrapped_key("studio.shot010")
        .expect("a wrapped data key");
    DataKey::unwrap(&wrapped, &kek).expect("the data key unwraps with the Secret's KEK");
    assert!(!sent.contains(&hex), "the KEK leaked into a request: {sent}");
}

#[tokio::test]
async fn a_missing_key_secret_gives_key_secret_missing_a_warning_and_no_workspace() {
    let (ctx, mut handle) = context();
    let server = async {
        expect_status(&mut handle, "GET", SECRET_PATH, 404, &not_found()).await;
        let (_, status) = expect(
            &mut handle,
            "PATCH",
            &format!("{WS_PATH}/status"),
            &serde_json::to_value(encrypted_ws()).expect("json"),
        )
        .await;
        let (ready_status, why, message) = ready(&status["status"]);
        assert_eq!(
            (ready_status.as_str(), why.as_str()),
            ("False", "KeySecretMissing")
        );
        assert!(
            message.contains("Secret studio/shot010-kek does not exist"),
            "{message}"
        );
        assert!(status["status"].get("workspaceId").is_none(), "{status}");
        let (_, event) = expect(&mut handle, "POST", EVENTS_PATH, &serde_json::json!({})).await;
        assert_eq!(
            (event["type"].as_str(), event["reason"].as_str()),
            (Some("Warning"), Some("KeySecretMissing"))
        );
    };
    let (result, ()) = tokio::join!(
        reconcile::<Workspaces, _>(Arc::new(encrypted_ws()), ctx.clone()),
        server
    );
    let action = result.expect("a missing Secret is a condition, not a reconcile error");
    assert_eq!(
        format!("{action:?}"),
        format!(
            "{:?}",
            kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(30))
        )
    );
    assert!(
        ctx.store.workspace("studio.shot010").is_none(),
        "nothing is created without the key"
    );
    assert_eq!(ctx.store.writes(), 0);
}

#[tokio::test]
async fn a_malformed_key_gives_invalid_key_and_its_value_is_in_no_request() {
    let (ctx, mut handle) = context();
    let value = b"swordfish-not-a-kek";
    let mut sent = String::new();
    let server = async {
        expect(&mut handle, "GET", SECRET_PATH, &secret_with("kek", value)).await;
        let (_, status) = expect(
            &mut handle,
            "PATCH",
            &format!("{WS_PATH}/status"),
            &serde_json::to_value(encrypted_ws()).expect("json"),
        )
        .await;
        let (ready_status, why, message) = ready(&status["status"]);
        assert_eq!((ready_status.as_str(), why.as_str()), ("False", "InvalidKey"));
        assert!(
            message.contains("key \"kek\" of Secret studio/shot010-kek"),
            "{message}"
        );
        let (_, event) = expect(&mut handle, "POST", EVENTS_PATH, &serde_json::json!({})).await;
        assert_eq!(event["reason"], "InvalidKey");
        sent = format!("{status} {event}");
    };
    let (result, ()) = tokio::join!(
        reconcile::<Workspaces, _>(Arc::new(encrypted_ws()), ctx.clone()),
        server
    );
    result.expect("reconcile");
    assert!(ctx.store.workspace("studio.shot010").is_none());
    assert!(!sent.contains("swordfish"), "the Secret's value leaked: {sent}");
}

#[tokio::test]
async fn a_forbidden_key_secret_is_a_retried_error_with_key_secret_unreadable() {
    let (ctx, mut handle) = context();
    let forbidden = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "secrets \"shot010-kek\" is forbidden: User \"system:serviceaccount:studiodrive-system:operator\" cannot get resource \"secrets\"",
        "reason": "Forbidden", "code": 403,
    });
    let server = async {
        expect_status(&mut handle, "GET", SECRET_PATH, 403, &forbidden).await;
        let (_, status) = expect(
            &mut handle,
            "PATCH",
            &format!("{WS_PATH}/status"),
            &serde_json::to_value(encrypted_ws()).expect("json"),
        )
        .await;
        let (ready_status, why, message) = ready(&status["status"]);
        assert_eq!(
            (ready_status.as_str(), why.as_str()),
            ("False", "KeySecretUnreadable")
        );
        assert!(
            message.contains("403") && message.contains("forbidden"),
            "{message}"
        );
        let degraded: WorkspaceStatus = serde_json::from_value(status["status"].clone()).expect("status");
        assert!(conditions::is_true(&degraded.conditions, "Degraded"));
    };
    let (result, ()) = tokio::join!(
        reconcile::<Workspaces, _>(Arc::new(encrypted_ws()), ctx.clone()),
        server
    );
    let err = result.expect_err("an unreadable Secret is retried with backoff");
    assert_eq!(err.label(), "key_secret_unreadable");
    assert!(ctx.store.workspace("studio.shot010").is_none());
}
