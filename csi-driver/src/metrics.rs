//! Prometheus metrics of a mount, in a registry of its own, served on `--metrics-addr`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio_util::sync::CancellationToken;

/// The metrics a mount exports.
pub struct Metrics {
    pub registry: Registry,
    ops: IntCounterVec,
    latency: HistogramVec,
    pub read_bytes: IntCounter,
    pub write_bytes: IntCounter,
    pub meta_commits: IntGauge,
    pub meta_retries: IntGauge,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("studiodrive".into()), None)?;
        let ops = IntCounterVec::new(
            Opts::new("fuse_operations_total", "FUSE operations by name and result"),
            &["op", "result"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new("fuse_operation_seconds", "FUSE operation latency")
                .buckets(prometheus::exponential_buckets(0.00005, 2.0, 18)?),
            &["op"],
        )?;
        let read_bytes = IntCounter::new("fuse_read_bytes_total", "Bytes returned by FUSE reads")?;
        let write_bytes = IntCounter::new("fuse_write_bytes_total", "Bytes accepted by FUSE writes")?;
        let meta_commits = IntGauge::new("metadata_commits", "Metadata transactions committed")?;
        let meta_retries = IntGauge::new("metadata_retries", "Metadata serialization retries")?;
        registry.register(Box::new(ops.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(read_bytes.clone()))?;
        registry.register(Box::new(write_bytes.clone()))?;
        registry.register(Box::new(meta_commits.clone()))?;
        registry.register(Box::new(meta_retries.clone()))?;
        Ok(Metrics {
            registry,
            ops,
            latency,
            read_bytes,
            write_bytes,
            meta_commits,
            meta_retries,
        })
    }

    /// Records one finished operation.
    pub fn observe_op(&self, op: &str, ok: bool, took: Duration) {
        self.ops.with_label_values(&[op, if ok { "ok" } else { "error" }]).inc();
        self.latency.with_label_values(&[op]).observe(took.as_secs_f64());
    }

    fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// Serves `/metrics` on `addr` until `cancel` fires.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>, cancel: CancellationToken) -> std::io::Result<()> {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving metrics");
    loop {
        let (stream, _) = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            accepted = listener.accept() => accepted?,
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_req| {
                let body = metrics.render();
                async move { Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(body)))) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
