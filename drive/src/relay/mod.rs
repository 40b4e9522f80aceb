//! Event delivery: the change feed, relayed to the sinks declared per workspace.
//!
//! The feed is a transactional outbox (every mutation writes its event row in its own
//! transaction). A [`Relay`] delivers it to NATS JetStream subjects and CloudEvents 1.0
//! webhooks:
//! - at least once: a sink's cursor (`position`, in the metadata store) moves only after the
//!   sink acknowledged every event at or below it, and retention keeps every event above the
//!   lowest cursor;
//! - in feed order per workspace (the order events become visible, id order within a poll),
//!   one event at a time, the next only after the previous one was acknowledged;
//! - each event with a stable id (`<workspace id>:<event id>`): JetStream drops redeliveries
//!   inside its duplicate window by it (`Nats-Msg-Id`), other consumers deduplicate by it;
//! - one relay delivers a sink at a time (a lease in the sink's row), so relays can run on
//!   several operator replicas and a killed one is replaced when its lease lapses;
//! - a sink that fails is retried with exponential backoff and reported (consecutive failures,
//!   the last error, `failing_since`: the operator's Degraded condition), without holding up
//!   writers (the relay only reads the feed) or other sinks (each sink is its own task).

mod nats;
mod paths;
mod webhook;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::data::{Kek, KeyError};
use crate::error::MetaError;
use crate::meta::{Delivery, PgMetaStore, SinkRecord, WorkspaceFeed};
use crate::model::{Event, Timestamp};

/// Events a sink's worker reads from the feed at once: a sink far behind (started from the
/// beginning of a long log) works through its backlog in batches of this many, in bounded
/// memory.
const MAX_BATCH: usize = 1024;

pub use paths::PathResolver;

/// Where a sink delivers and which events it wants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SinkSpec {
    pub target: SinkTarget,
    #[serde(default)]
    pub filter: EventFilter,
    /// The sink's credential, sealed with the sink secrets key ([`seal_secret`]; base64): a
    /// webhook's signing key, a NATS token or credentials file. The store never holds it in
    /// clear; only a relay given the key opens it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_secret: Option<String>,
}

/// What a sealed secret is bound to: the sink's id (a sealed value copied to another sink
/// does not open there).
fn secret_context(sink_id: &str) -> Vec<u8> {
    [b"studiodrive event sink ".as_slice(), sink_id.as_bytes()].concat()
}

/// Seals a sink's credential for [`SinkSpec::sealed_secret`].
pub fn seal_secret(key: &Kek, sink_id: &str, secret: &[u8]) -> Result<String, KeyError> {
    use base64::Engine as _;
    Ok(base64::engine::general_purpose::STANDARD.encode(key.seal(&secret_context(sink_id), secret)?))
}

/// Checks that `secret` is a usable credential for `target` (a webhook signing key of 16 bytes
/// at least, a NATS token or credentials file that parses); the message never holds it.
pub fn check_secret(target: &SinkTarget, secret: &[u8]) -> Result<(), String> {
    match target {
        SinkTarget::Nats { .. } => nats::Auth::parse(secret).map(drop),
        SinkTarget::Webhook { .. } => webhook::SigningKey::parse(secret).map(drop),
    }
}

/// Opens a value made by [`seal_secret`] for the same sink.
pub fn open_secret(key: &Kek, sink_id: &str, sealed: &str) -> Result<Vec<u8>, KeyError> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(sealed)
        .map_err(|_| KeyError::SealDamaged)?;
    key.open(&secret_context(sink_id), &bytes)
}

/// A sink's destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SinkTarget {
    /// JetStream: each event is published to `<subject>.<kind>` (so consumers can filter by
    /// kind with subject wildcards) and counts as delivered when the stream acknowledged it.
    Nats {
        /// `nats://host:port` (or `tls://`).
        url: String,
        subject: String,
        /// A stream to create (capturing `<subject>.>`) when it does not exist; without it the
        /// stream must exist, and publishing fails until it does.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stream: Option<String>,
    },
    /// A CloudEvents 1.0 webhook: each event is POSTed as `application/cloudevents+json` and
    /// counts as delivered on a 2xx answer.
    Webhook { url: String },
}

/// Which events a sink wants; empty lists want everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventFilter {
    /// Workspace paths (`/shot010`); an event is wanted when its path (or, for a rename, the
    /// path it came from) is one of them or below one, by whole names (`/a` covers `/a/b`,
    /// not `/ab`). Events of the workspace itself (snapshots, shares) have no path and are
    /// left out by a path filter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path_prefixes: Vec<String>,
    /// Event kinds (`create`, `write`, `rename`, `snapshot.create`, ...), exactly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
}

/// Why a sink spec was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("sink url {0:?}: {1}")]
    Url(String, &'static str),
    #[error("NATS subject {0:?}: dot-separated tokens of letters, digits, '-' and '_' (no wildcards)")]
    Subject(String),
    #[error("JetStream stream name {0:?}: 1 to 64 letters, digits, '-' and '_'")]
    Stream(String),
    #[error("path prefix {0:?}: {1}")]
    PathPrefix(String, String),
    #[error("event kind {0:?}: lower-case letters, digits, '.', '-' and '_'")]
    Kind(String),
    #[error("the sealed secret is not a sealed value (base64, at most 64 KiB sealed)")]
    SealedSecret,
}

impl SinkSpec {
    /// Checks every field; a spec that passes can be delivered to.
    pub fn validate(&self) -> Result<(), SpecError> {
        match &self.target {
            SinkTarget::Nats { url, subject, stream } => {
                check_url(url, &["nats", "tls"])?;
                let token_ok = |t: &str| {
                    !t.is_empty()
                        && t.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                };
                if subject.len() > 200 || !subject.split('.').all(token_ok) {
                    return Err(SpecError::Subject(subject.clone()));
                }
                if let Some(stream) = stream
                    && (stream.len() > 64 || !token_ok(stream))
                {
                    return Err(SpecError::Stream(stream.clone()));
                }
            }
            SinkTarget::Webhook { url } => check_url(url, &["http", "https"])?,
        }
        if let Some(sealed) = &self.sealed_secret {
            use base64::Engine as _;
            let decoded = base64::engine::general_purpose::STANDARD.decode(sealed);
            if !decoded.is_ok_and(|b| !b.is_empty() && b.len() <= crate::data::MAX_SEALED_SECRET + 64) {
                return Err(SpecError::SealedSecret);
            }
        }
        for prefix in &self.filter.path_prefixes {
            if !prefix.starts_with('/') {
                return Err(SpecError::PathPrefix(prefix.clone(), "must start with /".into()));
            }
            crate::model::WorkspacePath::parse(prefix)
                .map_err(|e| SpecError::PathPrefix(prefix.clone(), e.to_string()))?;
        }
        for kind in &self.filter.kinds {
            let ok = !kind.is_empty()
                && kind.len() <= 64
                && kind
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'));
            if !ok {
                return Err(SpecError::Kind(kind.clone()));
            }
        }
        Ok(())
    }

    /// Where it delivers, for status and logs (no credentials: user info is cut from urls).
    pub fn endpoint(&self) -> String {
        match &self.target {
            SinkTarget::Nats { url, subject, .. } => format!("{} {subject}", redact_url(url)),
            SinkTarget::Webhook { url } => redact_url(url),
        }
    }
}

fn check_url(url: &str, schemes: &[&'static str]) -> Result<(), SpecError> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(SpecError::Url(url.into(), "no scheme"));
    };
    if !schemes.contains(&scheme) {
        return Err(SpecError::Url(
            redact_url(url),
            if schemes.contains(&"http") {
                "the scheme must be http or https"
            } else {
                "the scheme must be nats or tls"
            },
        ));
    }
    if rest.is_empty() || url.len() > 2048 || url.chars().any(char::is_whitespace) {
        return Err(SpecError::Url(redact_url(url), "no host, or whitespace"));
    }
    let refused = url
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| {
            u.host()
                .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
        })
        .and_then(|h| h.parse::<std::net::IpAddr>().ok())
        .is_some_and(webhook::refused_address);
    if refused {
        return Err(SpecError::Url(
            redact_url(url),
            "a link-local, unspecified or multicast address (cloud metadata endpoints live there)",
        ));
    }
    Ok(())
}

/// `url` without user info (`user:password@`).
fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
                None => url.to_string(),
            }
        }
        None => url.to_string(),
    }
}

impl EventFilter {
    /// Whether an event of `kind` at `path` (and, for a move, from `from`) is wanted.
    pub fn wants(&self, kind: &str, path: Option<&str>, from: Option<&str>) -> bool {
        if !self.kinds.is_empty() && !self.kinds.iter().any(|k| k == kind) {
            return false;
        }
        if self.path_prefixes.is_empty() {
            return true;
        }
        let covered = |p: &str| {
            self.path_prefixes.iter().any(|prefix| {
                let prefix = prefix.trim_end_matches('/');
                prefix.is_empty()
                    || p == prefix
                    || p.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
            })
        };
        path.is_some_and(covered) || from.is_some_and(covered)
    }
}

/// One event as a sink receives it.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// `<workspace id>:<event id>`: the same on every redelivery.
    pub id: String,
    pub kind: String,
    /// The CloudEvents 1.0 JSON of the event.
    pub body: bytes::Bytes,
}

/// The CloudEvent of `event` in workspace `ws_name`, with its path (and the path it came from)
/// as the relay resolved them.
pub fn cloud_event(ws_name: &str, event: &Event, path: Option<&str>, from: Option<&str>) -> Outgoing {
    let id = format!("{}:{}", event.workspace.0, event.id);
    let time = jiff::Timestamp::from_nanosecond(i128::from(event.at.0))
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_string();
    let mut data = serde_json::json!({
        "workspace": ws_name,
        "workspaceId": event.workspace.0.to_string(),
        "op": event.op,
        "actor": event.actor,
        "eventId": event.id,
    });
    if let Some(ino) = event.ino {
        data["node"] = serde_json::json!(ino.0);
    }
    if let Some(path) = path {
        data["path"] = serde_json::json!(path);
    }
    if let Some(from) = from {
        data["fromPath"] = serde_json::json!(from);
    }
    // `published` and `reverted` name the snapshot (and the epoch) they made or went back to.
    if let Some(snapshot) = &event.snapshot {
        data["snapshot"] = serde_json::json!(snapshot);
    }
    if let Some(epoch) = event.epoch {
        data["epoch"] = serde_json::json!(epoch.0);
    }
    if let Some(name) = &event.name
        && path.is_none()
    {
        data["name"] = serde_json::json!(name.to_string_lossy());
    }
    let mut ce = serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": format!("/studiodrive/workspaces/{ws_name}"),
        "type": format!("dev.studiodrive.{}", event.op),
        "time": time,
        "datacontenttype": "application/json",
        // The CloudEvents sequence extension: the feed position, increasing per workspace.
        "sequence": format!("{:020}", event.id),
        "data": data,
    });
    if let Some(path) = path {
        ce["subject"] = serde_json::json!(path);
    }
    Outgoing {
        id,
        kind: event.op.clone(),
        body: bytes::Bytes::from(serde_json::to_vec(&ce).unwrap_or_default()),
    }
}

/// Why a delivery attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot reach {endpoint}: {message}")]
    Unreachable { endpoint: String, message: String },
    #[error("{endpoint} refused event {id}: {message}")]
    Refused {
        endpoint: String,
        id: String,
        message: String,
    },
    /// The sink's sealed credential cannot be used (no key, another key, damaged, malformed).
    #[error("{endpoint}: the sink's secret cannot be used: {message}")]
    Secret { endpoint: String, message: String },
}

/// A connection to one sink's destination (boxed: both clients are large, and one is made
/// per sink).
enum SinkClient {
    Nats(Box<nats::NatsSink>),
    Webhook(Box<webhook::WebhookSink>),
}

impl SinkClient {
    fn new(sink_id: &str, spec: &SinkSpec, key: Option<&Kek>) -> Result<SinkClient, SinkError> {
        let secret_error = |message: String| SinkError::Secret {
            endpoint: spec.endpoint(),
            message,
        };
        let secret = match (&spec.sealed_secret, key) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(secret_error(
                    "this relay has no sink secrets key (--sink-secret-key-file)".into(),
                ));
            }
            (Some(sealed), Some(key)) => {
                Some(open_secret(key, sink_id, sealed).map_err(|e| secret_error(e.to_string()))?)
            }
        };
        Ok(match &spec.target {
            SinkTarget::Nats { url, subject, stream } => {
                let auth = secret
                    .map(|s| nats::Auth::parse(&s))
                    .transpose()
                    .map_err(secret_error)?;
                SinkClient::Nats(Box::new(nats::NatsSink::new(url, subject, stream.clone(), auth)))
            }
            SinkTarget::Webhook { url } => {
                let signing = secret
                    .map(|s| webhook::SigningKey::parse(&s))
                    .transpose()
                    .map_err(secret_error)?;
                SinkClient::Webhook(Box::new(webhook::WebhookSink::new(url, signing)?))
            }
        })
    }

    /// Delivers one event; returns once the destination acknowledged it.
    async fn deliver(&mut self, event: &Outgoing) -> Result<(), SinkError> {
        match self {
            SinkClient::Nats(s) => s.deliver(event).await,
            SinkClient::Webhook(s) => s.deliver(event).await,
        }
    }
}

/// How a relay runs.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// This relay's name in sink leases (unique per process).
    pub holder: String,
    /// How long a sink stays with this relay without a renewal.
    pub lease: Duration,
    /// How often an idle sink looks for new events.
    pub poll_interval: Duration,
    /// How often the relay looks for sinks it does not deliver yet.
    pub rescan_interval: Duration,
    /// First and longest wait between attempts on a failing sink.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Events delivered between cursor saves.
    pub checkpoint_every: usize,
    /// Opens the sinks' sealed secrets; a sink with one cannot be delivered without it.
    pub secret_key: Option<Kek>,
}

impl Default for RelayConfig {
    fn default() -> RelayConfig {
        RelayConfig {
            holder: format!("relay:{}", uuid::Uuid::new_v4()),
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(200),
            rescan_interval: Duration::from_secs(5),
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            checkpoint_every: 256,
            secret_key: None,
        }
    }
}

/// What a relay knows of each sink it delivers, for metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SinkStats {
    pub delivered: u64,
    pub filtered: u64,
    pub failures: u64,
    /// Seconds between the commit of the oldest event not yet delivered and now (0 when
    /// caught up).
    pub lag_seconds: f64,
    /// Whether this relay holds the sink's lease.
    pub active: bool,
}

/// Per-sink statistics of one relay, shared with whoever exports them.
#[derive(Debug, Default)]
pub struct RelayStats {
    sinks: Mutex<BTreeMap<String, SinkStats>>,
}

impl RelayStats {
    pub fn snapshot(&self) -> BTreeMap<String, SinkStats> {
        self.sinks.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn update(&self, sink: &str, f: impl FnOnce(&mut SinkStats)) {
        if let Ok(mut sinks) = self.sinks.lock() {
            f(sinks.entry(sink.to_string()).or_default());
        }
    }
}

/// Delivers every sink of the metadata store whose lease it can take.
pub struct Relay {
    store: PgMetaStore,
    config: RelayConfig,
    stats: Arc<RelayStats>,
}

impl Relay {
    pub fn new(store: PgMetaStore, config: RelayConfig) -> Relay {
        Relay {
            store,
            config,
            stats: Arc::new(RelayStats::default()),
        }
    }

    pub fn stats(&self) -> Arc<RelayStats> {
        self.stats.clone()
    }

    /// Runs until `cancel`: one task per sink, started when the sink appears (and restarted
    /// when its spec changes), ended when it goes. Errors of the metadata store are retried.
    pub async fn run(self, cancel: CancellationToken) {
        let mut tasks: BTreeMap<String, (SinkSpec, CancellationToken, tokio::task::JoinHandle<()>)> =
            BTreeMap::new();
        loop {
            match self.store.event_sinks().await {
                Ok(sinks) => {
                    let wanted: BTreeMap<String, SinkRecord> =
                        sinks.into_iter().map(|s| (s.id.clone(), s)).collect();
                    tasks.retain(|id, (spec, stop, task)| {
                        let keep = !task.is_finished() && wanted.get(id).is_some_and(|s| &s.spec == spec);
                        if !keep {
                            stop.cancel();
                        }
                        keep
                    });
                    for (id, sink) in wanted {
                        if tasks.contains_key(&id) {
                            continue;
                        }
                        let stop = cancel.child_token();
                        let worker = SinkWorker {
                            store: self.store.clone(),
                            config: self.config.clone(),
                            stats: self.stats.clone(),
                            id: id.clone(),
                            spec: sink.spec.clone(),
                        };
                        let task = tokio::spawn(worker.run(stop.clone()));
                        tasks.insert(id, (sink.spec, stop, task));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "relay: cannot list event sinks"),
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(self.config.rescan_interval) => {}
            }
        }
        for (_, (_, stop, task)) in tasks {
            stop.cancel();
            let _ = task.await;
        }
    }
}

/// The delivery loop of one sink.
struct SinkWorker {
    store: PgMetaStore,
    config: RelayConfig,
    stats: Arc<RelayStats>,
    id: String,
    spec: SinkSpec,
}

/// Why a sink's delivery loop stopped holding it.
enum Stop {
    Cancelled,
    /// Another relay took the lease, or the sink was deleted.
    LostLease,
}

impl SinkWorker {
    async fn run(self, cancel: CancellationToken) {
        let mut wait = Duration::ZERO;
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
            wait = self.config.lease / 3;
            let claimed = match self
                .store
                .claim_event_sink(&self.id, &self.config.holder, self.config.lease)
                .await
            {
                Ok(Some(record)) if record.spec == self.spec => record,
                // Deleted or changed: the relay's next scan starts the right worker.
                Ok(Some(_)) => break,
                Ok(None) => match self.store.event_sink(&self.id).await {
                    Ok(None) => break,
                    _ => continue,
                },
                Err(e) => {
                    tracing::warn!(sink = %self.id, error = %e, "relay: cannot claim event sink");
                    continue;
                }
            };
            tracing::info!(sink = %self.id, endpoint = %self.spec.endpoint(), position = claimed.position, "relay: delivering event sink");
            self.stats.update(&self.id, |s| s.active = true);
            let stop = self.deliver(claimed, &cancel).await;
            self.stats.update(&self.id, |s| {
                s.active = false;
                s.lag_seconds = 0.0;
            });
            match stop {
                Stop::Cancelled => {
                    // Hand the sink over at once instead of after the lease.
                    let _ = self.store.release_event_sink(&self.id, &self.config.holder).await;
                    break;
                }
                Stop::LostLease => {
                    tracing::info!(sink = %self.id, "relay: event sink taken over or deleted");
                }
            }
        }
    }

    /// Delivers the sink from its recorded position while this relay holds it.
    async fn deliver(&self, claimed: SinkRecord, cancel: &CancellationToken) -> Stop {
        let ws_name = loop {
            match self.store.get_workspace_by_id(claimed.workspace).await {
                Ok(ws) => break ws.name,
                Err(MetaError::NotFound(_)) => break claimed.workspace.0.to_string(),
                Err(e) => {
                    tracing::warn!(sink = %self.id, error = %e, "relay: cannot read the sink's workspace");
                    if self
                        .pause(self.config.min_backoff.max(self.config.poll_interval), cancel)
                        .await
                    {
                        return Stop::Cancelled;
                    }
                }
            }
        };
        let mut paths = PathResolver::new(claimed.workspace);
        let mut feed = WorkspaceFeed::new(claimed.workspace, claimed.position);
        let mut client = None;
        let mut position = claimed.position;
        let mut last_renewal = Instant::now();
        loop {
            let events = match feed.poll_at_most(&self.store, MAX_BATCH).await {
                Ok(events) => events,
                Err(e) => {
                    if !self.failed(&format!("reading the change feed: {e}")).await {
                        return Stop::LostLease;
                    }
                    if self.pause(self.config.max_backoff, cancel).await {
                        return Stop::Cancelled;
                    }
                    continue;
                }
            };
            let floor = feed.resume_cursor();
            if events.is_empty() {
                // Caught up: the position may still move (the horizon rose), and the lease
                // needs renewing well before it lapses.
                if floor > position || last_renewal.elapsed() >= self.config.lease / 3 {
                    let delivery = Delivery {
                        position: floor,
                        ..Delivery::default()
                    };
                    match self.record(&delivery).await {
                        Some(true) => {
                            position = floor.max(position);
                            last_renewal = Instant::now();
                        }
                        Some(false) => return Stop::LostLease,
                        None => {}
                    }
                }
                self.stats.update(&self.id, |s| s.lag_seconds = 0.0);
                if self.pause(self.config.poll_interval, cancel).await {
                    return Stop::Cancelled;
                }
                continue;
            }
            let resolved = match paths.resolve(&self.store, &events).await {
                Ok(resolved) => resolved,
                Err(e) => {
                    if !self.failed(&format!("resolving event paths: {e}")).await {
                        return Stop::LostLease;
                    }
                    if self.pause(self.config.max_backoff, cancel).await {
                        return Stop::Cancelled;
                    }
                    // The feed moved on: start again from the saved position.
                    feed = WorkspaceFeed::new(claimed.workspace, position);
                    continue;
                }
            };
            let mut pending = Delivery {
                position,
                ..Delivery::default()
            };
            for (i, (event, (path, from))) in events.iter().zip(resolved).enumerate() {
                if self
                    .spec
                    .filter
                    .wants(&event.op, path.as_deref(), from.as_deref())
                {
                    let out = cloud_event(&ws_name, event, path.as_deref(), from.as_deref());
                    let lag = lag_seconds(event.at);
                    self.stats.update(&self.id, |s| s.lag_seconds = lag);
                    match self
                        .deliver_one(&mut client, &out, event.at, cancel, &mut last_renewal)
                        .await
                    {
                        Ok(()) => pending.delivered += 1,
                        Err(stop) => return stop,
                    }
                } else {
                    pending.filtered += 1;
                }
                pending.last_event_at = Some(event.at);
                // Events come in id order, and every event at or below the floor was visible
                // to the poll: so every event at or below both the floor and this one is
                // handled, and once the last one is, every event at or below the floor.
                let last = i + 1 == events.len();
                pending.position = position.max(if last { floor } else { floor.min(event.id) });
                // Saved every so many events, and often enough that the lease never lapses
                // under a slow sink.
                let due = (pending.delivered + pending.filtered) as usize >= self.config.checkpoint_every
                    || last_renewal.elapsed() >= self.config.lease / 3;
                if last || due {
                    match self.record(&pending).await {
                        Some(true) => {
                            position = pending.position;
                            last_renewal = Instant::now();
                            let (delivered, filtered) = (pending.delivered, pending.filtered);
                            self.stats.update(&self.id, |s| {
                                s.delivered += delivered;
                                s.filtered += filtered;
                            });
                            pending = Delivery {
                                position,
                                ..Delivery::default()
                            };
                        }
                        Some(false) => return Stop::LostLease,
                        // Saved later; delivered events are at worst delivered again.
                        None => {}
                    }
                }
            }
        }
    }

    /// Delivers one event, retrying with backoff until it is acknowledged; fails only when
    /// cancelled or when the lease is lost.
    async fn deliver_one(
        &self,
        client: &mut Option<SinkClient>,
        out: &Outgoing,
        committed: Timestamp,
        cancel: &CancellationToken,
        last_renewal: &mut Instant,
    ) -> Result<(), Stop> {
        let mut backoff = self.config.min_backoff;
        loop {
            if cancel.is_cancelled() {
                return Err(Stop::Cancelled);
            }
            let attempt = match client {
                Some(c) => c.deliver(out).await,
                None => match SinkClient::new(&self.id, &self.spec, self.config.secret_key.as_ref()) {
                    Ok(c) => client.insert(c).deliver(out).await,
                    Err(e) => Err(e),
                },
            };
            let error = match attempt {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            tracing::warn!(sink = %self.id, error = %error, "relay: delivery failed; retrying");
            let lag = lag_seconds(committed);
            self.stats.update(&self.id, |s| {
                s.failures += 1;
                s.lag_seconds = lag;
            });
            if !self.failed(&error.to_string()).await {
                return Err(Stop::LostLease);
            }
            *last_renewal = Instant::now();
            if matches!(error, SinkError::Unreachable { .. }) {
                // Reconnect on the next attempt.
                *client = None;
            }
            if self.pause(backoff, cancel).await {
                return Err(Stop::Cancelled);
            }
            backoff = (backoff * 2).min(self.config.max_backoff);
        }
    }

    /// Saves a delivery; `None` when the store could not be reached (tried again later).
    async fn record(&self, delivery: &Delivery) -> Option<bool> {
        match self
            .store
            .record_sink_delivery(&self.id, &self.config.holder, delivery, self.config.lease)
            .await
        {
            Ok(held) => Some(held),
            Err(e) => {
                tracing::warn!(sink = %self.id, error = %e, "relay: cannot save the sink's position");
                None
            }
        }
    }

    /// Records a failed attempt; false when the lease is lost. A store that cannot be reached
    /// keeps the lease as far as this relay knows (it lapses if the store stays away).
    async fn failed(&self, error: &str) -> bool {
        match self
            .store
            .record_sink_failure(&self.id, &self.config.holder, error, self.config.lease)
            .await
        {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(sink = %self.id, error = %e, "relay: cannot record a delivery failure");
                true
            }
        }
    }

    /// Sleeps `d`; true when cancelled meanwhile.
    async fn pause(&self, d: Duration, cancel: &CancellationToken) -> bool {
        tokio::select! {
            () = cancel.cancelled() => true,
            () = tokio::time::sleep(d) => false,
        }
    }
}

fn lag_seconds(committed: Timestamp) -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    ((now - committed.0).max(0) as f64) / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook(url: &str) -> SinkSpec {
        SinkSpec {
            target: SinkTarget::Webhook { url: url.into() },
            filter: EventFilter::default(),
            sealed_secret: None,
        }
    }

    #[test]
    fn sink_urls_naming_metadata_addresses_are_invalid() {
        for url in [
            "http://169.254.169.254/latest",
            "https://user:pw@[fe80::1]:8443/h",
        ] {
            let err = webhook(url).validate().unwrap_err();
            assert!(err.to_string().contains("link-local"), "{err}");
            assert!(!err.to_string().contains("pw@"), "credentials echoed: {err}");
        }
        let nats = SinkSpec {
            target: SinkTarget::Nats {
                url: "nats://169.254.169.254:4222".into(),
                subject: "sd".into(),
                stream: None,
            },
            ..webhook("http://x")
        };
        assert!(nats.validate().is_err());
        assert_eq!(webhook("http://10.0.0.7:8080/hook").validate(), Ok(()));
        assert_eq!(webhook("https://hooks.example.com/h").validate(), Ok(()));
    }
}
