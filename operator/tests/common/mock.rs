//! kube's mock service (tower-test) as the API server: a client whose requests the test
//! answers one by one.

use std::sync::Arc;

use http::{Request, Response};
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use operator::gc_job::GcJobSettings;
use operator::metrics::Metrics;
use operator::reconcile::{Backoff, Context};
use operator::store::memory::MemoryStore;
use serde_json::Value;
use tower_test::mock::{Handle, pair};

use super::at;

pub type MockHandle = Handle<Request<Body>, Response<Body>>;

pub fn context() -> (Arc<Context<MemoryStore>>, MockHandle) {
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
pub async fn expect(handle: &mut MockHandle, method: &str, path: &str, reply: &Value) -> (String, Value) {
    expect_status(handle, method, path, 200, reply).await
}

/// As [`expect`], answering with HTTP status `code`.
pub async fn expect_status(
    handle: &mut MockHandle,
    method: &str,
    path: &str,
    code: u16,
    reply: &Value,
) -> (String, Value) {
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
        .status(code)
        .body(Body::from(serde_json::to_vec(reply).expect("reply")))
        .expect("response");
    send.send_response(response);
    (query, body)
}
