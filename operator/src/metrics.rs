//! Prometheus metrics of the operator, in one registry owned by the process (never the global
//! default registry, so tests do not share state). Names are constants here and documented in
//! docs/operator.md.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub const RECONCILES_TOTAL: &str = "studiodrive_reconciles_total";
pub const RECONCILE_ERRORS_TOTAL: &str = "studiodrive_reconcile_errors_total";
pub const RECONCILE_DURATION_SECONDS: &str = "studiodrive_reconcile_duration_seconds";
pub const OBJECTS_MANAGED: &str = "studiodrive_operator_objects_managed";
pub const LEADER: &str = "studiodrive_operator_leader";

/// The kinds the operator reconciles, as the `kind` label spells them.
pub const KINDS: [&str; 7] = [
    "Workspace",
    "Snapshot",
    "Share",
    "LifecyclePolicy",
    "EventSink",
    "Preload",
    "MediaDataStore",
];

/// The operator's metrics.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Reconciles by `kind` and `result` (ok | error).
    pub reconciles: IntCounterVec,
    /// Failed reconciles by `kind` and `reason` (a stable snake_case label).
    pub errors: IntCounterVec,
    /// Reconcile duration by `kind`.
    pub duration: HistogramVec,
    /// Objects in the controllers' caches by `kind`.
    pub objects: IntGaugeVec,
    /// 1 while this replica holds the leader lease.
    pub leader: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric in a fresh registry.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(RECONCILES_TOTAL, "Reconciles by kind and result"),
            &["kind", "result"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(RECONCILE_ERRORS_TOTAL, "Failed reconciles by kind and reason"),
            &["kind", "reason"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(RECONCILE_DURATION_SECONDS, "Reconcile duration by kind").buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["kind"],
        )?;
        let objects = IntGaugeVec::new(Opts::new(OBJECTS_MANAGED, "Objects watched by kind"), &["kind"])?;
        let leader = IntGauge::new(LEADER, "1 while this replica holds the leader lease")?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(objects.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        // Served from the first scrape (0 until the caches sync), not once a count is known.
        for kind in KINDS {
            objects.with_label_values(&[kind]).set(0);
        }
        Ok(Metrics {
            registry,
            reconciles,
            errors,
            duration,
            objects,
            leader,
        })
    }

    /// Records one finished reconcile.
    pub fn observe(&self, kind: &str, seconds: f64, error: Option<&str>) {
        self.duration.with_label_values(&[kind]).observe(seconds);
        let result = if error.is_some() { "error" } else { "ok" };
        self.reconciles.with_label_values(&[kind, result]).inc();
        if let Some(reason) = error {
            self.errors.with_label_values(&[kind, reason]).inc();
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for the text format except on invalid metric data,
        // which the constructors above rule out; an empty body is the safe fallback.
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
