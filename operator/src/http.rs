//! The metrics and health endpoint: `GET /metrics` (Prometheus text), `GET /healthz` (the
//! process serves requests), `GET /readyz` (the metadata store answered its last check).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// State the endpoint reports.
pub struct HealthState {
    pub metrics: Arc<Metrics>,
    /// Set by the store health check.
    pub ready: AtomicBool,
}

/// Answers one request.
pub fn respond(state: &HealthState, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let (status, body, content_type) = match (method, path) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            state.metrics.render(),
            "text/plain; version=0.0.4",
        ),
        (&Method::GET, "/healthz") => (StatusCode::OK, "ok\n".to_string(), "text/plain"),
        (&Method::GET, "/readyz") if state.ready.load(Ordering::SeqCst) => {
            (StatusCode::OK, "ready\n".to_string(), "text/plain")
        }
        (&Method::GET, "/readyz") => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metadata store unavailable\n".to_string(),
            "text/plain",
        ),
        _ => (StatusCode::NOT_FOUND, "not found\n".to_string(), "text/plain"),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

/// Keeps `state.ready` equal to whether the metadata store answered its last ping, checked
/// every `interval` until `shutdown`. A ping that takes longer than `interval` counts as a
/// failure: a database that hangs is not ready (an unknown answer is a refusal).
pub async fn follow_store_health<F, Fut>(
    ping: F,
    state: Arc<HealthState>,
    interval: Duration,
    shutdown: CancellationToken,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let answered = tokio::time::timeout(interval, ping()).await.unwrap_or(false);
        let was = state.ready.swap(answered, Ordering::SeqCst);
        if was != answered {
            tracing::info!(ready = answered, "metadata store health changed");
        }
    }
}

/// Serves the endpoint on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, state: Arc<HealthState>, shutdown: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint accept failed");
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let response = respond(&state, req.method(), req.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}
