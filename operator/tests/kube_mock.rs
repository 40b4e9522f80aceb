//! Kubernetes API interactions against kube's mock service (tower-test): the exact requests a
//! reconcile sends for the finalizer, the status and events, and that a reconcile of an
//! unchanged object sends nothing.

mod common;

use std::sync::Arc;

use common::*;
use http::{Request, Response};
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use operator::crd::{DeletionPolicy, Workspace, WorkspaceKind, conditions};
use operator::gc_job::GcJobSettings;
use operator::metrics::Metrics;
use operator::reconcile::{Backoff, Context, workspace};
use operator::store::memory::MemoryStore;
use serde_json::Value;
use tower_test::mock::{Handle, pair};

type MockHandle = Handle<Request<Body>, Response<Body>>;

fn context() -> (Arc<Context<MemoryStore>>, MockHandle) {
    let (service, handle) = pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let reporter = Reporter {
        controller: "studiodrive-operator".into(),
        instance: Some("test".into()),
    };
    let ctx = Context {
        client: client.clone(),
        store: MemoryStore::default(),
        recorder: Recorder::new(client, reporter),
        metrics: Arc::new(Metrics::new().expect("metrics")),
        clock: || at(1_000),
        backoff: Backoff::default(),
        gc: GcJobSettings::default(),
    };
    (Arc::new(ctx), handle)
}

/// Takes the next request, checks method and path, answers with `reply`, returns the body.
async fn expect(handle: &mut MockHandle, method: &str, path: &str, reply: &Value) -> (String, Value) {
    let (request, send) = handle.next_request().await.expect("a request");
    assert_eq!(request.method().as_str(), method, "method of {}", request.uri());
    assert_eq!(request.uri().path(), path);
    let query = request.uri().query().unwrap_or_default().to_string();
    let bytes = request.into_body().collect_bytes().await.expect("request body");
    let body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    let response = Response::builder()
        .body(Body::from(serde_json::to_vec(reply).expect("reply")))
        .expect("response");
    send.send_response(response);
    (query, body)
}

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
    let (result, ()) = tokio::join!(workspace::reconcile(Arc::new(w), ctx.clone()), server);
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
    let (result, ()) = tokio::join!(workspace::reconcile(Arc::new(w.clone()), ctx.clone()), server);
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
        result = workspace::reconcile(Arc::new(settled), ctx.clone()) => { result.expect("quiet reconcile"); }
        request = handle.next_request() => panic!("unexpected request {:?}", request.map(|(r, _)| r.uri().clone())),
    }
}

#[tokio::test]
async fn deletion_while_the_store_is_down_keeps_the_finalizer_then_removes_it_after_recovery() {
    let (ctx, mut handle) = context();
    let mut w = ws_with_finalizer();
    // Create it in the store first.
    ctx.store.set_available(true);
    operator::reconcile::workspace::sync(
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
        result = workspace::reconcile(w.clone(), ctx.clone()) => {
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
    let (result, ()) = tokio::join!(workspace::reconcile(w.clone(), ctx.clone()), server);
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
