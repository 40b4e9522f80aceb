//! Prometheus metrics of a mount and of the CSI plugin, each in a registry of its own, served
//! on `--metrics-addr`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use drive::data::BlockStore;
use drive::fs::MetaCacheStats;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
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
    data: DataMetrics,
    blocks: OnceLock<BlockStore>,
    meta_cache_hits: IntCounter,
    meta_cache_misses: IntCounter,
    meta_cache: OnceLock<Arc<MetaCacheStats>>,
}

/// Object-store and cache counters, copied from the data path's atomics at each scrape.
struct DataMetrics {
    store_requests: IntCounterVec,
    store_errors: IntCounter,
    store_bytes: IntCounterVec,
    dedup_hits: IntCounter,
    cache_hits: IntCounter,
    cache_misses: IntCounter,
    cache_evictions: IntCounter,
    cache_hit_bytes: IntCounter,
    cache_bytes: IntGauge,
    memory_hits: IntCounter,
    memory_misses: IntCounter,
    memory_evictions: IntCounter,
    memory_bytes: IntGauge,
}

impl DataMetrics {
    fn new(registry: &Registry) -> Result<DataMetrics, prometheus::Error> {
        let m = DataMetrics {
            store_requests: IntCounterVec::new(
                Opts::new(
                    "object_store_requests_total",
                    "Object-store block requests by operation",
                ),
                &["op"],
            )?,
            store_errors: IntCounter::new(
                "object_store_errors_total",
                "Object-store requests that failed after retries",
            )?,
            store_bytes: IntCounterVec::new(
                Opts::new(
                    "object_store_bytes_total",
                    "Bytes moved to and from the object store",
                ),
                &["direction"],
            )?,
            dedup_hits: IntCounter::new(
                "blocks_deduplicated_total",
                "Blocks not uploaded because already stored",
            )?,
            cache_hits: IntCounter::new("cache_hits_total", "Block cache hits")?,
            cache_misses: IntCounter::new("cache_misses_total", "Block cache misses")?,
            cache_evictions: IntCounter::new("cache_evictions_total", "Blocks evicted from the cache")?,
            cache_hit_bytes: IntCounter::new("cache_hit_bytes_total", "Bytes served from the block cache")?,
            cache_bytes: IntGauge::new("cache_bytes", "Bytes held in the block cache")?,
            memory_hits: IntCounter::new(
                "memory_cache_hits_total",
                "Block reads served from the in-memory plaintext cache",
            )?,
            memory_misses: IntCounter::new(
                "memory_cache_misses_total",
                "Block reads the in-memory plaintext cache could not serve",
            )?,
            memory_evictions: IntCounter::new(
                "memory_cache_evictions_total",
                "Blocks evicted from the in-memory plaintext cache",
            )?,
            memory_bytes: IntGauge::new(
                "memory_cache_bytes",
                "Bytes held in the in-memory plaintext cache",
            )?,
        };
        registry.register(Box::new(m.store_requests.clone()))?;
        registry.register(Box::new(m.store_errors.clone()))?;
        registry.register(Box::new(m.store_bytes.clone()))?;
        registry.register(Box::new(m.dedup_hits.clone()))?;
        registry.register(Box::new(m.cache_hits.clone()))?;
        registry.register(Box::new(m.cache_misses.clone()))?;
        registry.register(Box::new(m.cache_evictions.clone()))?;
        registry.register(Box::new(m.cache_hit_bytes.clone()))?;
        registry.register(Box::new(m.cache_bytes.clone()))?;
        registry.register(Box::new(m.memory_hits.clone()))?;
        registry.register(Box::new(m.memory_misses.clone()))?;
        registry.register(Box::new(m.memory_evictions.clone()))?;
        registry.register(Box::new(m.memory_bytes.clone()))?;
        Ok(m)
    }

    fn sync(&self, blocks: &BlockStore) {
        let s = blocks.stats();
        advance(&self.store_requests.with_label_values(&["get"]), &s.gets);
        advance(&self.store_requests.with_label_values(&["put"]), &s.puts);
        advance(&self.store_errors, &s.errors);
        advance(
            &self.store_bytes.with_label_values(&["download"]),
            &s.bytes_downloaded,
        );
        advance(
            &self.store_bytes.with_label_values(&["upload"]),
            &s.bytes_uploaded,
        );
        advance(&self.dedup_hits, &s.dedup_hits);
        if let Some(cache) = blocks.cache() {
            let c = cache.stats();
            advance(&self.cache_hits, &c.hits);
            advance(&self.cache_misses, &c.misses);
            advance(&self.cache_evictions, &c.evictions);
            advance(&self.cache_hit_bytes, &c.hit_bytes);
            self.cache_bytes.set(cache.used_bytes() as i64);
        }
        if let Some(memory) = blocks.memory_cache() {
            let m = memory.stats();
            advance(&self.memory_hits, &m.hits);
            advance(&self.memory_misses, &m.misses);
            advance(&self.memory_evictions, &m.evictions);
            self.memory_bytes.set(memory.used_bytes() as i64);
        }
    }
}

/// Moves a Prometheus counter up to the value of a monotonic atomic.
fn advance(counter: &IntCounter, source: &AtomicU64) {
    let now = source.load(Ordering::Relaxed);
    let shown = counter.get();
    if now > shown {
        counter.inc_by(now - shown);
    }
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
        let meta_cache_hits = IntCounter::new(
            "metadata_cache_hits_total",
            "Lookups and getattrs answered by the mount's metadata cache",
        )?;
        let meta_cache_misses = IntCounter::new(
            "metadata_cache_misses_total",
            "Lookups and getattrs the metadata cache sent to the metadata store",
        )?;
        registry.register(Box::new(meta_cache_hits.clone()))?;
        registry.register(Box::new(meta_cache_misses.clone()))?;
        let data = DataMetrics::new(&registry)?;
        Ok(Metrics {
            registry,
            ops,
            latency,
            read_bytes,
            write_bytes,
            meta_commits,
            meta_retries,
            data,
            blocks: OnceLock::new(),
            meta_cache_hits,
            meta_cache_misses,
            meta_cache: OnceLock::new(),
        })
    }

    /// Reports the object-store and cache counters of `blocks` from now on.
    pub fn watch_blocks(&self, blocks: BlockStore) {
        let _ = self.blocks.set(blocks);
    }

    /// Reports the metadata cache's counters from now on.
    pub fn watch_meta_cache(&self, stats: Arc<MetaCacheStats>) {
        let _ = self.meta_cache.set(stats);
    }

    /// Records one finished operation.
    pub fn observe_op(&self, op: &str, ok: bool, took: Duration) {
        self.ops
            .with_label_values(&[op, if ok { "ok" } else { "error" }])
            .inc();
        self.latency.with_label_values(&[op]).observe(took.as_secs_f64());
    }
}

/// A set of metrics that can be scraped.
pub trait Exporter: Send + Sync + 'static {
    /// The Prometheus text format of every metric.
    fn render(&self) -> Vec<u8>;
}

fn encode(registry: &Registry) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = prometheus::TextEncoder::new().encode(&registry.gather(), &mut out);
    out
}

impl Exporter for Metrics {
    fn render(&self) -> Vec<u8> {
        if let Some(blocks) = self.blocks.get() {
            self.data.sync(blocks);
        }
        if let Some(stats) = self.meta_cache.get() {
            advance(&self.meta_cache_hits, &stats.hits);
            advance(&self.meta_cache_misses, &stats.misses);
        }
        encode(&self.registry)
    }
}

/// The CSI plugin's metrics: calls by method and code, their latency, live publications.
pub struct CsiMetrics {
    pub registry: Registry,
    calls: IntCounterVec,
    latency: HistogramVec,
    /// Volumes published on this node.
    pub mounts: IntGauge,
}

impl CsiMetrics {
    pub fn new() -> Result<CsiMetrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("studiodrive".into()), None)?;
        let calls = IntCounterVec::new(
            Opts::new("csi_calls_total", "CSI gRPC calls by method and status code"),
            &["method", "code"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new("csi_call_seconds", "CSI gRPC call latency")
                .buckets(prometheus::exponential_buckets(0.0005, 2.0, 18)?),
            &["method"],
        )?;
        let mounts = IntGauge::new("csi_mounts", "Volumes published on this node")?;
        registry.register(Box::new(calls.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(mounts.clone()))?;
        Ok(CsiMetrics {
            registry,
            calls,
            latency,
            mounts,
        })
    }

    /// Records one finished call.
    pub fn observe_call(&self, method: &str, code: tonic::Code, took: Duration) {
        self.calls
            .with_label_values(&[method, &format!("{code:?}")])
            .inc();
        self.latency
            .with_label_values(&[method])
            .observe(took.as_secs_f64());
    }
}

impl Exporter for CsiMetrics {
    fn render(&self) -> Vec<u8> {
        encode(&self.registry)
    }
}

/// The HTTP API's metrics: requests by route template, method and status, their latency, and
/// requests in flight.
pub struct ApiMetrics {
    pub registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    pub in_flight: IntGauge,
}

impl ApiMetrics {
    pub fn new() -> Result<ApiMetrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("studiodrive".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new(
                "api_requests_total",
                "API requests by route (its OpenAPI path template), method and HTTP status",
            ),
            &["route", "method", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new("api_request_seconds", "API request latency, by route")
                .buckets(prometheus::exponential_buckets(0.0005, 2.0, 18)?),
            &["route"],
        )?;
        let in_flight = IntGauge::new("api_requests_in_flight", "API requests being answered")?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        Ok(ApiMetrics {
            registry,
            requests,
            latency,
            in_flight,
        })
    }

    /// Records one answered request.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, took: Duration) {
        self.requests
            .with_label_values(&[route, method, &status.to_string()])
            .inc();
        self.latency
            .with_label_values(&[route])
            .observe(took.as_secs_f64());
    }
}

impl Exporter for ApiMetrics {
    fn render(&self) -> Vec<u8> {
        encode(&self.registry)
    }
}

/// The metrics of block GC passes (`studiodrive-csi gc --metrics-file`), from their reports.
pub struct GcMetrics {
    pub registry: Registry,
    objects_deleted: IntCounterVec,
    bytes_deleted: IntCounterVec,
    pass_duration: Histogram,
    eligible_bytes: IntGauge,
    throttle_waits: IntCounter,
    backoff_pauses: IntCounter,
}

impl GcMetrics {
    pub fn new() -> Result<GcMetrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("studiodrive".into()), None)?;
        let objects_deleted = IntCounterVec::new(
            Opts::new(
                "gc_objects_deleted_total",
                "Objects GC deleted, by phase (sweep: unreferenced blocks; orphans: objects without a record)",
            ),
            &["phase"],
        )?;
        let bytes_deleted = IntCounterVec::new(
            Opts::new("gc_bytes_deleted_total", "Stored bytes GC deleted, by phase"),
            &["phase"],
        )?;
        let pass_duration = Histogram::with_opts(
            HistogramOpts::new("gc_pass_duration_seconds", "How long GC passes took")
                .buckets(prometheus::exponential_buckets(1.0, 2.0, 16)?),
        )?;
        let eligible_bytes = IntGauge::new(
            "gc_eligible_bytes",
            "Stored bytes of the unreferenced blocks the last pass's mark found",
        )?;
        let throttle_waits = IntCounter::new(
            "gc_throttle_waits_total",
            "Times GC passes waited for their delete rate",
        )?;
        let backoff_pauses = IntCounter::new(
            "gc_backoff_pauses_total",
            "Times GC passes paused while metadata transactions were slow",
        )?;
        for phase in ["sweep", "orphans"] {
            objects_deleted.with_label_values(&[phase]);
            bytes_deleted.with_label_values(&[phase]);
        }
        registry.register(Box::new(objects_deleted.clone()))?;
        registry.register(Box::new(bytes_deleted.clone()))?;
        registry.register(Box::new(pass_duration.clone()))?;
        registry.register(Box::new(eligible_bytes.clone()))?;
        registry.register(Box::new(throttle_waits.clone()))?;
        registry.register(Box::new(backoff_pauses.clone()))?;
        Ok(GcMetrics {
            registry,
            objects_deleted,
            bytes_deleted,
            pass_duration,
            eligible_bytes,
            throttle_waits,
            backoff_pauses,
        })
    }

    /// Adds a finished pass.
    pub fn record(&self, report: &drive::gc::PassReport) {
        let phases = [
            ("sweep", report.deleted, report.deleted_bytes),
            ("orphans", report.orphans_deleted, report.orphan_bytes),
        ];
        for (phase, objects, bytes) in phases {
            self.objects_deleted.with_label_values(&[phase]).inc_by(objects);
            self.bytes_deleted.with_label_values(&[phase]).inc_by(bytes);
        }
        self.pass_duration.observe(report.duration_ms as f64 / 1000.0);
        self.eligible_bytes.set(report.candidate_bytes as i64);
        self.throttle_waits.inc_by(report.throttle_waits);
        self.backoff_pauses.inc_by(report.backoff_pauses);
    }
}

impl Exporter for GcMetrics {
    fn render(&self) -> Vec<u8> {
        encode(&self.registry)
    }
}

/// The metrics of an event relay (`studiodrive-csi relay`), per sink, from its statistics.
pub struct RelayMetrics {
    registry: Registry,
    stats: Arc<drive::relay::RelayStats>,
    delivered: IntCounterVec,
    filtered: IntCounterVec,
    failures: IntCounterVec,
    lag: prometheus::GaugeVec,
    active: prometheus::IntGaugeVec,
    /// What the counters showed at the last scrape, per sink (they only add the difference).
    seen: std::sync::Mutex<std::collections::BTreeMap<String, drive::relay::SinkStats>>,
}

impl RelayMetrics {
    pub fn new(stats: Arc<drive::relay::RelayStats>) -> Result<RelayMetrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("studiodrive".into()), None)?;
        let counter = |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), &["sink"]);
        let delivered = counter("event_sink_delivered_total", "Events a sink acknowledged")?;
        let filtered = counter("event_sink_filtered_total", "Events a sink's filter left out")?;
        let failures = counter("event_sink_failures_total", "Failed delivery attempts")?;
        let lag = prometheus::GaugeVec::new(
            Opts::new(
                "event_sink_lag_seconds",
                "Age of the oldest event a sink has not acknowledged (0 when caught up)",
            ),
            &["sink"],
        )?;
        let active = prometheus::IntGaugeVec::new(
            Opts::new("event_sink_active", "1 while this relay holds the sink's lease"),
            &["sink"],
        )?;
        registry.register(Box::new(delivered.clone()))?;
        registry.register(Box::new(filtered.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(lag.clone()))?;
        registry.register(Box::new(active.clone()))?;
        Ok(RelayMetrics {
            registry,
            stats,
            delivered,
            filtered,
            failures,
            lag,
            active,
            seen: std::sync::Mutex::default(),
        })
    }
}

impl Exporter for RelayMetrics {
    fn render(&self) -> Vec<u8> {
        if let Ok(mut seen) = self.seen.lock() {
            for (sink, now) in self.stats.snapshot() {
                let before = seen.entry(sink.clone()).or_default();
                let labels = [sink.as_str()];
                self.delivered
                    .with_label_values(&labels)
                    .inc_by(now.delivered.saturating_sub(before.delivered));
                self.filtered
                    .with_label_values(&labels)
                    .inc_by(now.filtered.saturating_sub(before.filtered));
                self.failures
                    .with_label_values(&labels)
                    .inc_by(now.failures.saturating_sub(before.failures));
                self.lag.with_label_values(&labels).set(now.lag_seconds);
                self.active.with_label_values(&labels).set(i64::from(now.active));
                *before = now;
            }
        }
        encode(&self.registry)
    }
}

/// Serves `/metrics` on `addr` until `cancel` fires.
pub async fn serve<E: Exporter>(
    addr: SocketAddr,
    metrics: Arc<E>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
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
                async move {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use super::{ApiMetrics, CsiMetrics, Exporter as _, GcMetrics, Metrics, RelayMetrics};

    /// The files of the Helm chart that query metrics: the Grafana dashboards and the
    /// PrometheusRule's rule groups.
    const CHART_FILES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/studiodrive/files");

    /// The names of the metric families every binary exports: a mount's (`mount`, and each
    /// volume of the node plugin), the CSI plugin's (`serve`), a GC pass's (`gc
    /// --metrics-file`), the event relay's (`relay`) and the operator's. Histograms are named
    /// without their `_bucket`, `_sum` and `_count` series.
    ///
    /// A registry leaves a labelled family out of a scrape until it has a child, so each is
    /// given one here, as the first operation, call, reconcile or scrape does in a binary. A
    /// new labelled family a dashboard queries needs a line here.
    fn exported_by_some_binary() -> BTreeSet<String> {
        let mount = Metrics::new().unwrap();
        mount.observe_op("lookup", true, Duration::ZERO);
        mount.data.store_requests.with_label_values(&["get"]);
        mount.data.store_bytes.with_label_values(&["download"]);
        let csi = CsiMetrics::new().unwrap();
        csi.observe_call("Probe", tonic::Code::Ok, Duration::ZERO);
        let api = ApiMetrics::new().unwrap();
        api.observe_request("/v1/datastores", "GET", 200, Duration::ZERO);
        let gc = GcMetrics::new().unwrap();
        // The relay's families are per sink: a scrape after the relay held one.
        let relay = RelayMetrics::new(std::sync::Arc::default()).unwrap();
        for family in [&relay.delivered, &relay.filtered, &relay.failures] {
            family.with_label_values(&["sink"]);
        }
        relay.lag.with_label_values(&["sink"]);
        relay.active.with_label_values(&["sink"]);
        let operator = operator::metrics::Metrics::new().unwrap();
        operator.observe("Workspace", 0.01, Some("store_unavailable"));
        [
            &mount.registry,
            &csi.registry,
            &api.registry,
            &gc.registry,
            &relay.registry,
            &operator.registry,
        ]
        .into_iter()
        .flat_map(prometheus::Registry::gather)
        .map(|f| f.name().to_string())
        .collect()
    }

    /// Every `studiodrive_...` name in the strings of a dashboard or rule file (queries,
    /// template variables, descriptions), without the `_bucket`, `_sum` and `_count` suffixes
    /// of histogram series.
    fn named_metrics(value: &serde_json::Value, out: &mut BTreeSet<String>) {
        match value {
            serde_json::Value::String(text) => {
                let mut rest = text.as_str();
                while let Some(at) = rest.find("studiodrive_") {
                    let name: String = rest[at..]
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                        .collect();
                    rest = &rest[at + name.len()..];
                    let base = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s))
                        .unwrap_or(&name);
                    out.insert(base.to_string());
                }
            }
            serde_json::Value::Object(map) => map.values().for_each(|v| named_metrics(v, out)),
            serde_json::Value::Array(items) => items.iter().for_each(|v| named_metrics(v, out)),
            _ => {}
        }
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    /// Every dashboard of the chart, parsed, by file name.
    fn dashboards() -> BTreeMap<String, serde_json::Value> {
        let dir = PathBuf::from(CHART_FILES).join("dashboards");
        let mut out = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                let value = serde_json::from_str(&read(&path))
                    .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
                out.insert(path.file_name().unwrap().to_string_lossy().into_owned(), value);
            }
        }
        out
    }

    /// The chart's alert rules: a YAML document `groups: [...]`.
    fn alert_rules() -> serde_json::Value {
        let path = PathBuf::from(CHART_FILES).join("prometheus-rules.yaml");
        serde_saphyr::from_str(&read(&path)).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
    }

    // Catches: a dashboard panel or an alert on a metric no binary exports (a typo, a rename,
    // a metric that was never built): it would show "No data" or never fire.
    #[test]
    fn the_dashboards_and_alerts_query_only_metrics_the_binaries_export() {
        let exported = exported_by_some_binary();
        let mut files: Vec<(String, serde_json::Value)> = dashboards().into_iter().collect();
        assert!(
            files.iter().any(|(f, _)| f == "studiodrive-overview.json")
                && files.iter().any(|(f, _)| f == "studiodrive-gc.json"),
            "dashboards: {:?}",
            files.iter().map(|(f, _)| f).collect::<Vec<_>>()
        );
        files.push(("prometheus-rules.yaml".into(), alert_rules()));
        let mut unknown = Vec::new();
        for (file, value) in &files {
            let mut names = BTreeSet::new();
            named_metrics(value, &mut names);
            assert!(names.len() >= 3, "{file} names only {names:?}");
            unknown.extend(names.difference(&exported).map(|n| format!("{file}: {n}")));
        }
        assert!(
            unknown.is_empty(),
            "queried but exported by no binary: {unknown:#?}\nexported: {exported:#?}"
        );
    }

    #[test]
    fn the_gc_dashboard_shows_what_gc_passes_free() {
        let mut names = BTreeSet::new();
        named_metrics(&dashboards()["studiodrive-gc.json"], &mut names);
        for name in [
            "studiodrive_gc_objects_deleted_total",
            "studiodrive_gc_bytes_deleted_total",
            "studiodrive_gc_pass_duration_seconds",
        ] {
            assert!(names.contains(name), "the dashboard shows {name}");
        }
    }

    // Catches: a panel bound to one Grafana's data source uid (it breaks on import elsewhere),
    // and an alert the Alertmanager routes or pages on without a severity or a text.
    #[test]
    fn dashboards_use_the_datasource_variable_and_alerts_are_complete() {
        fn datasources<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
            match value {
                serde_json::Value::Object(map) => {
                    if let Some(ds) = map.get("datasource") {
                        out.push(ds);
                    }
                    map.values().for_each(|v| datasources(v, out));
                }
                serde_json::Value::Array(items) => items.iter().for_each(|v| datasources(v, out)),
                _ => {}
            }
        }
        for (file, dashboard) in dashboards() {
            let variable = &dashboard["templating"]["list"]
                .as_array()
                .and_then(|l| l.iter().find(|v| v["name"] == "datasource"))
                .unwrap_or_else(|| panic!("{file} has no datasource variable"));
            assert_eq!(variable["type"], "datasource", "{file}");
            assert_eq!(variable["query"], "prometheus", "{file}");
            let mut found = Vec::new();
            datasources(&dashboard["panels"], &mut found);
            assert!(!found.is_empty(), "{file} panels name no datasource");
            for ds in found {
                assert_eq!(ds["uid"], "${datasource}", "{file}: {ds}");
            }
        }
        let rules = alert_rules();
        let groups = rules["groups"].as_array().expect("groups: [...]");
        let mut alerts = 0;
        for group in groups {
            for rule in group["rules"].as_array().expect("rules: [...]") {
                let name = rule["alert"].as_str().expect("alerting rules only");
                alerts += 1;
                assert!(
                    rule["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                    "{name}"
                );
                assert!(rule["for"].as_str().is_some(), "{name} has no for:");
                assert!(
                    ["critical", "warning", "info"]
                        .contains(&rule["labels"]["severity"].as_str().unwrap_or("")),
                    "{name} severity"
                );
                for key in ["summary", "description"] {
                    assert!(rule["annotations"][key].as_str().is_some(), "{name} has no {key}");
                }
            }
        }
        assert!(alerts >= 3, "{alerts} alerts");
    }

    #[test]
    fn a_pass_report_moves_the_gc_metrics() {
        let metrics = GcMetrics::new().unwrap();
        metrics.record(&drive::gc::PassReport {
            deleted: 3,
            deleted_bytes: 300,
            orphans_deleted: 2,
            orphan_bytes: 20,
            candidate_bytes: 310,
            throttle_waits: 4,
            backoff_pauses: 1,
            duration_ms: 1500,
            ..Default::default()
        });
        let text = String::from_utf8(metrics.render()).unwrap();
        for line in [
            "studiodrive_gc_objects_deleted_total{phase=\"sweep\"} 3",
            "studiodrive_gc_objects_deleted_total{phase=\"orphans\"} 2",
            "studiodrive_gc_bytes_deleted_total{phase=\"sweep\"} 300",
            "studiodrive_gc_bytes_deleted_total{phase=\"orphans\"} 20",
            "studiodrive_gc_eligible_bytes 310",
            "studiodrive_gc_throttle_waits_total 4",
            "studiodrive_gc_backoff_pauses_total 1",
            "studiodrive_gc_pass_duration_seconds_sum 1.5",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
    }
}
