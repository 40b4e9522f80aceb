//! `EventSink`: delivers a workspace's change feed to a NATS JetStream subject or a
//! CloudEvents 1.0 webhook. The operator records the sink in the metadata store (keyed
//! `<namespace>/<name>`); the relay Deployment (`studiodrive-csi relay`) reads it from there and
//! delivers, and the operator reports the relay's delivery record in the status.
//!
//! A resource of its own rather than a Workspace field: sinks belong to the teams that consume
//! them, a workspace has several, each has its own status (position, counts, Degraded), and
//! RBAC can grant EventSinks without granting Workspaces.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::SecretKeyRef;

/// Desired state of an event sink.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "studiodrive.dev",
    version = "v1alpha1",
    kind = "EventSink",
    namespaced,
    status = "EventSinkStatus",
    derive = "PartialEq",
    shortname = "sdsink",
    category = "studiodrive",
    cel,
    doc = "Delivers the change feed of a Studio Drive workspace to a NATS JetStream subject or a CloudEvents webhook, at least once and in order. A resource of its own (not a Workspace field): sinks belong to the teams that consume them, a workspace has several, each has its own status, and RBAC can grant EventSinks without granting Workspaces. The relay Deployment delivers; the operator records the sink and reports its progress.",
    printcolumn(name = "Workspace", type_ = "string", json_path = ".spec.workspace"),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Degraded", type_ = "string", json_path = ".status.conditions[?(@.type==\"Degraded\")].status"),
    printcolumn(name = "Delivered", type_ = "integer", json_path = ".status.delivered"),
    printcolumn(name = "Relay", type_ = "string", json_path = ".status.relay", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 253 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("metadata.name must be a DNS-1123 subdomain (it names the sink in the store)"),
)]
#[x_kube(validation = Rule::new("has(self.nats) != has(self.webhook)").message("exactly one of nats or webhook must be set"))]
#[serde(rename_all = "camelCase")]
pub struct EventSinkSpec {
    /// Name of the Workspace resource (same namespace) whose change feed is delivered.
    /// Immutable.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(
        validation = Rule::new("self == oldSelf").message("workspace is immutable"),
        validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("workspace must name a Workspace (DNS-1123 subdomain)"),
    )]
    pub workspace: String,
    /// Deliver to NATS JetStream (exactly one of nats and webhook).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsSink>,
    /// Deliver to a CloudEvents 1.0 webhook (exactly one of nats and webhook).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSink>,
    /// Which events to deliver; everything when empty.
    #[serde(default)]
    pub filter: EventSinkFilter,
    /// Where a new sink starts: `Now` (events from now on) or `Beginning` (the oldest event
    /// retention kept). Only read when the sink is created; changing it later has no effect.
    #[serde(default)]
    pub start_from: StartFrom,
}

/// A NATS JetStream destination: each event is published to `<subject>.<kind>` and counts as
/// delivered when the stream acknowledged it.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NatsSink {
    /// Server URL, `nats://host:port` or `tls://host:port`.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('nats://') || self.startsWith('tls://')").message("nats.url must start with nats:// or tls://"))]
    pub url: String,
    /// Subject prefix: dot-separated tokens of letters, digits, '-' and '_' (no wildcards).
    #[schemars(length(min = 1, max = 200))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9_-]+(\\\\.[A-Za-z0-9_-]+)*$')").message("nats.subject must be dot-separated tokens of letters, digits, '-' and '_' (no wildcards)"))]
    pub subject: String,
    /// A JetStream stream to create (capturing `<subject>.>`) when it does not exist; without
    /// it the stream must exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9_-]+$')").message("nats.stream must be letters, digits, '-' and '_'"))]
    pub stream: Option<String>,
    /// A key of a Secret (this namespace) holding how the relay authenticates: a NATS `.creds`
    /// file (user JWT and NKey seed) or a token. The Secret must be labelled
    /// `studiodrive.dev/event-sink-credential=true`. Sealed in the metadata store; never in the
    /// URL or the status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretKeyRef>,
}

/// A CloudEvents 1.0 webhook: each event is POSTed as `application/cloudevents+json` and
/// counts as delivered on a 2xx answer.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSink {
    /// `http://` or `https://` URL.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("webhook.url must start with http:// or https://"))]
    pub url: String,
    /// A key of a Secret (this namespace) holding the signing key: `whsec_<base64>` (the
    /// Standard Webhooks form) or the key bytes (16 at least). Each request is then signed as
    /// Standard Webhooks specifies (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
    /// The Secret must be labelled `studiodrive.dev/event-sink-credential=true`. Sealed in the
    /// metadata store; never in the status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret_ref: Option<SecretKeyRef>,
}

/// Which events a sink wants; empty lists want everything.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EventSinkFilter {
    /// Absolute workspace paths (`/shot010`): an event is delivered when its path (or, for a
    /// rename, the path it came from) is one of them or below one, by whole names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(p, p.startsWith('/') && !p.contains('\\u0000') && size(p) <= 4096)").message("path prefixes must be absolute, without NUL"))]
    pub path_prefixes: Vec<String>,
    /// Event kinds (`create`, `write`, `rename`, `snapshot.create`, ...), exactly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(k, size(k) <= 64 && k.matches('^[a-z0-9._-]+$'))").message("kinds are lower-case letters, digits, '.', '-' and '_'"))]
    pub kinds: Vec<String>,
}

/// Where a new sink starts.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, JsonSchema)]
pub enum StartFrom {
    /// Events committed from now on.
    #[default]
    Now,
    /// The oldest event retention kept.
    Beginning,
}

/// Observed state of an event sink: the relay's delivery record, as the store holds it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventSinkStatus {
    /// The metadata.generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Where it delivers (user info cut from the URL; a NATS sink adds its subject).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The sink's cursor in its workspace's change feed: every event at or below it was
    /// delivered (or came before the sink started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<i64>,
    /// Events delivered since the sink was created.
    #[serde(default)]
    pub delivered: u64,
    /// Events the filter left out.
    #[serde(default)]
    pub filtered: u64,
    /// When an event was last delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivered_at: Option<Time>,
    /// Delivery attempts that failed since the last success.
    #[serde(default)]
    pub consecutive_failures: u64,
    /// When the current run of failures began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<Time>,
    /// The last delivery error (it names endpoints and server answers, never credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The relay delivering the sink (the holder of its lease), when one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    /// Ready and Degraded.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}
