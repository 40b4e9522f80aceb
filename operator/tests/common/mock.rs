//! kube's mock service (tower-test) as the API server: a client whose requests the test
//! answers one by one.

use std::sync::Arc;

use http::{Request, Response};
use jiff::Timestamp;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use operator::gc_job::GcJobSettings;
use operator::metrics::Metrics;
use operator::reconcile::{Backoff, Context};
use operator::store::StudioStore;
use operator::store::memory::MemoryStore;
use serde_json::Value;
use tower_test::mock::{Handle, pair};

use super::at;

pub type MockHandle = Handle<Request<Body>, Response<Body>>;

pub fn context() -> (Arc<Context<MemoryStore>>, MockHandle) {
    context_with(MemoryStore::default(), || at(1_000))
}

/// A context over `store` (the real PostgreSQL adapter, say) with the clock `clock`.
pub fn context_with<S: StudioStore>(store: S, clock: fn() -> Timestamp) -> (Arc<Context<S>>, MockHandle) {
    let (service, handle) = pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let reporter = Reporter {
        controller: "studiodrive-operator".into(),
        instance: Some("test".into()),
    };
    let ctx = Context {
        client: client.clone(),
        store,
        recorder: Recorder::new(client, reporter),
        metrics: Arc::new(Metrics::new().expect("metrics")),
        clock,
        backoff: Backoff::default(),
        gc: GcJobSettings::default(),
        preload: Default::default(),
        sink_secret_key: None,
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
    let received = receive(request).await;
    assert_eq!(received.method, method, "method of {}", received.path);
    assert_eq!(received.path, path);
    send.send_response(response(code, reply));
    (received.query, received.body)
}

/// One request the mock API server received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Value,
}

async fn receive(request: Request<Body>) -> Received {
    let method = request.method().as_str().to_string();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or_default().to_string();
    let bytes = request.into_body().collect_bytes().await.expect("request body");
    let body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    Received {
        method,
        path,
        query,
        body,
    }
}

fn response(code: u16, reply: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(reply).expect("reply")))
        .expect("response")
}

/// Runs `work` while answering each request it sends with `answer` (HTTP 200); returns its
/// output and the requests in the order they came. For tests that count requests rather
/// than script them one by one.
pub async fn serve<F: std::future::Future>(
    handle: &mut MockHandle,
    work: F,
    mut answer: impl FnMut(&Received) -> Value,
) -> (F::Output, Vec<Received>) {
    let mut received = Vec::new();
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            biased;
            out = &mut work => return (out, received),
            next = handle.next_request() => {
                let (request, send) = next.expect("the client is alive while the work runs");
                let request = receive(request).await;
                send.send_response(response(200, &answer(&request)));
                received.push(request);
            }
        }
    }
}
