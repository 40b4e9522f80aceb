//! Planner for `EventSink`: keep the store's sink (`<namespace>/<name>`) equal to the spec,
//! and report the relay's delivery record (position, counts, lease holder, failures) as the
//! status. The operator never delivers: the relay Deployment does, and it moves the record;
//! so a recorded sink is looked at again every [`STATUS_POLL`] for the status to follow it.
//!
//! Conditions of a recorded sink:
//! - `Degraded=True` (`DeliveryFailing`, message: the relay's last error) when the failures
//!   since the last success number at least [`DEGRADED_FAILURES`] or began at least
//!   [`DEGRADED_AFTER`] ago. A blip the relay's own retries absorb does not flip it.
//! - `Ready=False` (`NoRelay`) when no relay holds the sink's lease; else `Ready=False`
//!   (`DeliveryFailing`) while degraded; else `Ready=True` (`Delivering`).

use std::time::Duration;

use drive::relay::{EventFilter, SinkSpec, SinkTarget};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::{
    EventNote, Plan, SpecError, WAIT_FOR_DEPENDENCY, canonical_path, invalid_spec_conditions,
    invalid_spec_event, previous_ready_reason, store_name,
};
use crate::crd::conditions::{self, Desired, reason};
use crate::crd::{EventSinkSpec, EventSinkStatus, SecretKeyRef, StartFrom};
use crate::plan::workspace::workspace_store_name;
use crate::store::{EventSinkRecord, WorkspaceRecord};

/// How often a recorded sink's status is refreshed from the store.
pub const STATUS_POLL: Duration = Duration::from_secs(30);
/// A run of failures this old makes the sink Degraded.
pub const DEGRADED_AFTER: SignedDuration = SignedDuration::from_secs(60);
/// This many consecutive failures make the sink Degraded, however recent the run.
pub const DEGRADED_FAILURES: u64 = 5;

/// The message of `Ready=False NoRelay`.
pub const NO_RELAY_MESSAGE: &str = "no relay is delivering this sink: is the relay Deployment running?";

/// The resource being planned.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub generation: i64,
    pub spec: &'a EventSinkSpec,
    pub status: Option<&'a EventSinkStatus>,
}

/// What the store (and the sink's Secret) hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The workspace the spec names (`None` also when the spec names none validly).
    pub workspace: Option<WorkspaceRecord>,
    /// The sink recorded under [`sink_id`].
    pub sink: Option<EventSinkRecord>,
    /// The sink's credential, as it is to be recorded.
    pub secret: SinkSecret,
}

/// The credential the spec names (`webhook.signingSecretRef`, `nats.credentialsSecretRef`), as
/// observed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SinkSecret {
    /// The spec names none.
    #[default]
    None,
    /// The sealed value to record ([`drive::relay::seal_secret`]).
    Sealed(String),
    /// It cannot be recorded: why (names the Secret and key, never the value).
    Unavailable(String),
}

/// The Secret key the spec names for the sink's credential.
pub fn secret_ref(spec: &EventSinkSpec) -> Option<&SecretKeyRef> {
    match (&spec.nats, &spec.webhook) {
        (Some(nats), None) => nats.credentials_secret_ref.as_ref(),
        (None, Some(webhook)) => webhook.signing_secret_ref.as_ref(),
        _ => None,
    }
}

/// A store operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create the sink, or replace its spec (the position is kept).
    Put {
        id: String,
        workspace: String,
        spec: SinkSpec,
        start: StartFrom,
    },
    Delete {
        id: String,
    },
}

/// The sink a resource asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredSink {
    pub id: String,
    /// Store name of the workspace.
    pub workspace: String,
    pub spec: SinkSpec,
}

/// The store id of the sink of resource `namespace/name`.
pub fn sink_id(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The store id, the workspace store name and the [`SinkSpec`] a resource asks for, checked
/// with the engine's own validation (so nothing the store would refuse reaches it).
pub fn desired_sink(input: &Input<'_>) -> Result<DesiredSink, SpecError> {
    let workspace = workspace_store_name(input.namespace, &input.spec.workspace)?;
    store_name(input.name)?;
    let target = match (&input.spec.nats, &input.spec.webhook) {
        (Some(nats), None) => SinkTarget::Nats {
            url: nats.url.clone(),
            subject: nats.subject.clone(),
            stream: nats.stream.clone(),
        },
        (None, Some(webhook)) => SinkTarget::Webhook {
            url: webhook.url.clone(),
        },
        _ => return Err(SpecError("exactly one of nats or webhook must be set".into())),
    };
    let path_prefixes = input
        .spec
        .filter
        .path_prefixes
        .iter()
        .map(|p| canonical_path(p).map_err(|e| SpecError(format!("filter.pathPrefixes: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let spec = SinkSpec {
        target,
        filter: EventFilter {
            path_prefixes,
            kinds: input.spec.filter.kinds.clone(),
        },
        // Set by `plan` from the observed Secret.
        sealed_secret: None,
    };
    spec.validate().map_err(|e| SpecError(e.to_string()))?;
    Ok(DesiredSink {
        id: sink_id(input.namespace, input.name),
        workspace,
        spec,
    })
}

/// Whether the record shows a run of failures long or old enough to report.
pub fn is_degraded(sink: &EventSinkRecord, now: Timestamp) -> bool {
    sink.consecutive_failures > 0
        && (sink.consecutive_failures >= DEGRADED_FAILURES
            || sink
                .failing_since
                .is_some_and(|since| now.duration_since(since) >= DEGRADED_AFTER))
}

fn status_from(
    input: &Input<'_>,
    sink: Option<&EventSinkRecord>,
    desired: &[Desired],
    now: Timestamp,
) -> EventSinkStatus {
    let previous = input.status.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let mut status = EventSinkStatus {
        observed_generation: Some(input.generation),
        conditions: conditions::merge(previous, desired, input.generation, now),
        ..EventSinkStatus::default()
    };
    if let Some(sink) = sink {
        status.endpoint = Some(sink.spec.endpoint());
        status.position = Some(sink.position);
        status.delivered = sink.delivered;
        status.filtered = sink.filtered;
        status.last_delivered_at = sink.last_delivered_at.map(Time);
        status.consecutive_failures = sink.consecutive_failures;
        status.failing_since = sink.failing_since.map(Time);
        status.last_error = (!sink.last_error.is_empty()).then(|| sink.last_error.clone());
        status.relay.clone_from(&sink.relay);
    }
    status
}

fn previous_degraded(previous: &[Condition]) -> bool {
    conditions::is_true(previous, conditions::DEGRADED)
}

/// Plans one reconcile of a live EventSink.
pub fn plan(input: &Input<'_>, observed: &Observed, now: Timestamp) -> Plan<Op, EventSinkStatus> {
    let previous = input.status.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let sink = observed.sink.as_ref();
    let mut desired = match desired_sink(input) {
        Ok(d) => d,
        Err(err) => {
            // Bad input changes nothing: a sink recorded from an earlier spec keeps delivering.
            return Plan {
                ops: Vec::new(),
                status: status_from(input, sink, &invalid_spec_conditions(&err), now),
                events: invalid_spec_event(previous, &err),
                requeue: None,
            };
        }
    };
    let Some(ws) = &observed.workspace else {
        let conds = [Desired::no(
            conditions::READY,
            reason::WORKSPACE_NOT_FOUND,
            format!(
                "workspace {} does not exist in the metadata store",
                desired.workspace
            ),
        )];
        return Plan {
            ops: Vec::new(),
            status: status_from(input, sink, &conds, now),
            events: Vec::new(),
            requeue: Some(WAIT_FOR_DEPENDENCY),
        };
    };
    match &observed.secret {
        SinkSecret::None => {}
        SinkSecret::Sealed(sealed) => desired.spec.sealed_secret = Some(sealed.clone()),
        // The sink recorded from an earlier spec (and Secret) keeps delivering.
        SinkSecret::Unavailable(why) => {
            let message = format!("{why}; the sink is not recorded or changed until it is available");
            let events = if previous_ready_reason(previous) == Some(reason::SINK_SECRET_UNAVAILABLE) {
                Vec::new()
            } else {
                vec![EventNote::warning(
                    reason::SINK_SECRET_UNAVAILABLE,
                    "Validate",
                    message.clone(),
                )]
            };
            let conds = [Desired::no(
                conditions::READY,
                reason::SINK_SECRET_UNAVAILABLE,
                message,
            )];
            return Plan {
                ops: Vec::new(),
                status: status_from(input, sink, &conds, now),
                events,
                requeue: Some(WAIT_FOR_DEPENDENCY),
            };
        }
    }
    let put = Op::Put {
        id: desired.id.clone(),
        workspace: desired.workspace.clone(),
        spec: desired.spec.clone(),
        start: input.spec.start_from,
    };
    let (ops, event) = match sink {
        None => (
            vec![put],
            EventNote::normal(
                "Created",
                "Create",
                format!("delivering {} to {}", desired.workspace, desired.spec.endpoint()),
            ),
        ),
        // The Workspace was deleted and created again under the same name: a sink cannot move,
        // so it is recreated on the new one (starting where `startFrom` says).
        Some(s) if s.workspace_id != ws.id => (
            vec![
                Op::Delete {
                    id: desired.id.clone(),
                },
                put,
            ],
            EventNote::normal(
                "Recreated",
                "Create",
                format!(
                    "workspace {} was recreated; the sink starts again on it",
                    desired.workspace
                ),
            ),
        ),
        Some(s) if s.spec != desired.spec => (
            vec![put],
            EventNote::normal(
                "Updated",
                "Update",
                format!("now delivering to {} (position kept)", desired.spec.endpoint()),
            ),
        ),
        Some(s) => return recorded(input, s, now),
    };
    let conds = [Desired::no(
        conditions::READY,
        reason::CREATING,
        "recording the sink",
    )];
    Plan {
        ops,
        status: status_from(input, sink, &conds, now),
        events: vec![event],
        requeue: Some(Duration::ZERO),
    }
}

/// The plan of a sink recorded as the spec asks: status from the relay's record.
fn recorded(input: &Input<'_>, sink: &EventSinkRecord, now: Timestamp) -> Plan<Op, EventSinkStatus> {
    let previous = input.status.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let degraded = is_degraded(sink, now);
    let mut conds = Vec::with_capacity(2);
    let mut events = Vec::new();
    if degraded {
        let message = if sink.last_error.is_empty() {
            format!("{} consecutive deliveries failed", sink.consecutive_failures)
        } else {
            sink.last_error.clone()
        };
        if !previous_degraded(previous) {
            events.push(EventNote::warning(
                reason::DELIVERY_FAILING,
                "Deliver",
                message.clone(),
            ));
        }
        conds.push(Desired::yes(
            conditions::DEGRADED,
            reason::DELIVERY_FAILING,
            message,
        ));
    } else {
        conds.push(Desired::no(
            conditions::DEGRADED,
            reason::DELIVERING,
            "no run of failed deliveries",
        ));
    }
    conds.push(match (&sink.relay, degraded) {
        (None, _) => Desired::no(conditions::READY, reason::NO_RELAY, NO_RELAY_MESSAGE),
        (Some(relay), true) => Desired::no(
            conditions::READY,
            reason::DELIVERY_FAILING,
            format!(
                "relay {relay}: {} consecutive deliveries failed{}",
                sink.consecutive_failures,
                sink.failing_since
                    .map(|t| format!(" since {t}"))
                    .unwrap_or_default()
            ),
        ),
        (Some(relay), false) => Desired::yes(
            conditions::READY,
            reason::DELIVERING,
            format!("relay {relay} is delivering this sink"),
        ),
    });
    Plan {
        ops: Vec::new(),
        status: status_from(input, Some(sink), &conds, now),
        events,
        requeue: Some(STATUS_POLL),
    }
}

/// Plans cleanup of an EventSink being deleted: remove its sink when the store has one
/// (whatever the spec says now: the id comes from the resource's name).
pub fn plan_cleanup(input: &Input<'_>, observed: &Observed) -> Vec<Op> {
    match &observed.sink {
        Some(_) => vec![Op::Delete {
            id: sink_id(input.namespace, input.name),
        }],
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::WorkspaceKind;
    use crate::crd::{EventSinkFilter, NatsSink, WebhookSink};

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).expect("valid test timestamp")
    }

    fn webhook_spec(url: &str) -> EventSinkSpec {
        EventSinkSpec {
            workspace: "shot010".into(),
            nats: None,
            webhook: Some(WebhookSink {
                url: url.into(),
                signing_secret_ref: None,
            }),
            filter: EventSinkFilter::default(),
            start_from: StartFrom::Now,
        }
    }

    fn nats_spec() -> EventSinkSpec {
        EventSinkSpec {
            workspace: "shot010".into(),
            nats: Some(NatsSink {
                url: "nats://user:secret@nats.messaging:4222".into(),
                subject: "studio.shot010".into(),
                stream: Some("STUDIO".into()),
                credentials_secret_ref: None,
            }),
            webhook: None,
            filter: EventSinkFilter {
                path_prefixes: vec!["/comp/".into(), "/plates".into()],
                kinds: vec!["create".into(), "snapshot.create".into()],
            },
            start_from: StartFrom::Beginning,
        }
    }

    fn input(spec: &EventSinkSpec) -> Input<'_> {
        Input {
            namespace: "studio",
            name: "changes",
            generation: 3,
            spec,
            status: None,
        }
    }

    fn ws() -> WorkspaceRecord {
        WorkspaceRecord {
            id: "ws-1".into(),
            name: "studio.shot010".into(),
            kind: WorkspaceKind::Team,
            block_size: 4 << 20,
            encrypted: false,
            quota_bytes: None,
            owners: Vec::new(),
            object_store: None,
        }
    }

    fn record(spec: SinkSpec) -> EventSinkRecord {
        EventSinkRecord {
            id: "studio/changes".into(),
            workspace_id: "ws-1".into(),
            spec,
            position: 42,
            relay: Some("relay-7f9c".into()),
            delivered: 40,
            filtered: 2,
            consecutive_failures: 0,
            failing_since: None,
            last_error: String::new(),
            last_delivered_at: Some(at(900)),
        }
    }

    fn reason_of(status: &EventSinkStatus, type_: &str) -> Option<(String, String)> {
        conditions::find(&status.conditions, type_).map(|c| (c.status.clone(), c.reason.clone()))
    }

    fn pair(status: &str, reason: &str) -> Option<(String, String)> {
        Some((status.into(), reason.into()))
    }

    #[test]
    fn a_valid_nats_spec_is_put_with_the_engine_sink_spec() {
        let spec = nats_spec();
        let observed = Observed {
            secret: SinkSecret::None,
            workspace: Some(ws()),
            sink: None,
        };
        let p = plan(&input(&spec), &observed, at(1_000));
        let [
            Op::Put {
                id,
                workspace,
                spec: sink,
                start,
            },
        ] = &p.ops[..]
        else {
            panic!("one put: {:?}", p.ops);
        };
        assert_eq!(id, "studio/changes");
        assert_eq!(workspace, "studio.shot010");
        assert_eq!(*start, StartFrom::Beginning);
        assert_eq!(
            sink.target,
            SinkTarget::Nats {
                url: "nats://user:secret@nats.messaging:4222".into(),
                subject: "studio.shot010".into(),
                stream: Some("STUDIO".into()),
            }
        );
        assert_eq!(sink.filter.path_prefixes, ["/comp", "/plates"], "canonical paths");
        assert_eq!(sink.filter.kinds, ["create", "snapshot.create"]);
        assert_eq!(p.events.len(), 1);
        assert!(
            !p.events[0].note.contains("secret"),
            "events name the endpoint without credentials: {}",
            p.events[0].note
        );
        assert_eq!(p.requeue, Some(Duration::ZERO));
    }

    #[test]
    fn a_webhook_spec_is_put_and_a_changed_spec_is_put_again() {
        let spec = webhook_spec("https://hooks.example.com/studio");
        let observed = Observed {
            secret: SinkSecret::None,
            workspace: Some(ws()),
            sink: None,
        };
        let p = plan(&input(&spec), &observed, at(1_000));
        let [Op::Put { spec: sink, .. }] = &p.ops[..] else {
            panic!("one put: {:?}", p.ops);
        };
        assert_eq!(
            sink.target,
            SinkTarget::Webhook {
                url: "https://hooks.example.com/studio".into()
            }
        );
        let stored = Observed {
            secret: SinkSecret::None,
            workspace: Some(ws()),
            sink: Some(record(sink.clone())),
        };
        let changed = webhook_spec("https://hooks.example.com/other");
        let again = plan(&input(&changed), &stored, at(1_000));
        assert!(matches!(&again.ops[..], [Op::Put { .. }]), "{:?}", again.ops);
        assert_eq!(again.events[0].reason, "Updated");
    }

    #[test]
    fn invalid_specs_change_nothing_and_say_why() {
        let both = EventSinkSpec {
            webhook: Some(WebhookSink {
                url: "https://h.example".into(),
                signing_secret_ref: None,
            }),
            ..nats_spec()
        };
        let neither = EventSinkSpec {
            nats: None,
            ..nats_spec()
        };
        let bad_scheme = webhook_spec("ftp://h.example/x");
        let relative = EventSinkSpec {
            filter: EventSinkFilter {
                path_prefixes: vec!["comp".into()],
                kinds: Vec::new(),
            },
            ..webhook_spec("https://h.example")
        };
        let mut wildcard = nats_spec();
        if let Some(n) = wildcard.nats.as_mut() {
            n.subject = "studio.*".into();
        }
        let bad_kind = EventSinkSpec {
            filter: EventSinkFilter {
                path_prefixes: Vec::new(),
                kinds: vec!["Create".into()],
            },
            ..webhook_spec("https://h.example")
        };
        let observed = Observed {
            secret: SinkSecret::None,
            workspace: Some(ws()),
            sink: None,
        };
        for (spec, says) in [
            (&both, "exactly one"),
            (&neither, "exactly one"),
            (&bad_scheme, "scheme"),
            (&relative, "absolute"),
            (&wildcard, "wildcards"),
            (&bad_kind, "kind"),
        ] {
            let p = plan(&input(spec), &observed, at(1_000));
            assert!(p.ops.is_empty(), "{spec:?}: {:?}", p.ops);
            assert_eq!(p.requeue, None);
            let ready = conditions::find(&p.status.conditions, conditions::READY).expect("Ready");
            assert_eq!(
                (ready.status.as_str(), ready.reason.as_str()),
                ("False", "InvalidSpec")
            );
            assert!(
                ready.message.contains(says),
                "{says:?} not in {:?}",
                ready.message
            );
            assert_eq!(p.events.len(), 1, "a warning on the transition");
            assert!(p.events[0].warning);
        }
    }

    #[test]
    fn a_missing_workspace_waits_without_ops() {
        let spec = webhook_spec("https://h.example");
        let p = plan(&input(&spec), &Observed::default(), at(1_000));
        assert!(p.ops.is_empty());
        assert_eq!(p.requeue, Some(super::super::WAIT_FOR_DEPENDENCY));
        assert_eq!(reason_of(&p.status, "Ready"), pair("False", "WorkspaceNotFound"));
    }

    #[test]
    fn a_recorded_sink_reports_the_relay_record_and_polls() {
        let spec = nats_spec();
        let desired = desired_sink(&input(&spec)).expect("valid");
        let observed = Observed {
            secret: SinkSecret::None,
            workspace: Some(ws()),
            sink: Some(record(desired.spec)),
        };
        let p = plan(&input(&spec), &observed, at(1_000));
        assert!(p.ops.is_empty());
        assert!(p.events.is_empty());
        assert_eq!(p.requeue, Some(STATUS_POLL));
        assert_eq!(reason_of(&p.status, "Ready"), pair("True", "Delivering"));
        assert_eq!(reason_of(&p.status, "Degraded"), pair("False", "Delivering"));
        let s = &p.status;
        assert_eq!((s.position, s.delivered, s.filtered), (Some(42), 40, 2));
        assert_eq!(s.relay.as_deref(), Some("relay-7f9c"));
        assert_eq!(s.last_delivered_at, Some(Time(at(900))));
        assert_eq!(s.last_error, None);
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(
            s.endpoint.as_deref(),
            Some("nats://***@nats.messaging:4222 studio.shot010"),
            "no credentials in the status"
        );
    }

    #[test]
    fn no_relay_holding_the_lease_is_ready_false_no_relay() {
        let spec = nats_spec();
        let mut sink = record(desired_sink(&input(&spec)).expect("valid").spec);
        sink.relay = None;
        let observed = Observed {
            secret: SinkSecret::None,
            workspace: Some(ws()),
            sink: Some(sink),
        };
        let p = plan(&input(&spec), &observed, at(1_000));
        let ready = conditions::find(&p.status.conditions, "Ready").expect("Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "NoRelay")
        );
        assert!(ready.message.contains("relay Deployment"), "{}", ready.message);
        assert_eq!(reason_of(&p.status, "Degraded"), pair("False", "Delivering"));
        assert_eq!(p.status.relay, None);
    }

    #[test]
    fn failures_degrade_only_past_the_count_or_age_threshold() {
        let spec = webhook_spec("https://hooks.example.com/x");
        let base = record(desired_sink(&input(&spec)).expect("valid").spec);
        let failing = |n: u64, since: i64| EventSinkRecord {
            consecutive_failures: n,
            failing_since: Some(at(since)),
            last_error: "POST https://hooks.example.com/x: 503 Service Unavailable".into(),
            ..base.clone()
        };
        let status_at = |sink: EventSinkRecord, now: i64| {
            let observed = Observed {
                secret: SinkSecret::None,
                workspace: Some(ws()),
                sink: Some(sink),
            };
            plan(&input(&spec), &observed, at(now))
        };
        // A young, short run: not yet.
        let young = status_at(failing(2, 980), 1_000);
        assert_eq!(reason_of(&young.status, "Degraded"), pair("False", "Delivering"));
        assert_eq!(reason_of(&young.status, "Ready"), pair("True", "Delivering"));
        assert_eq!(young.status.consecutive_failures, 2);
        assert!(young.events.is_empty());
        // Old enough.
        let old = status_at(failing(2, 900), 1_000);
        let degraded = conditions::find(&old.status.conditions, "Degraded").expect("Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "DeliveryFailing")
        );
        assert_eq!(
            degraded.message,
            "POST https://hooks.example.com/x: 503 Service Unavailable"
        );
        assert_eq!(reason_of(&old.status, "Ready"), pair("False", "DeliveryFailing"));
        assert_eq!(old.events.len(), 1);
        assert!(old.events[0].warning);
        // Many, however recent.
        let many = status_at(failing(DEGRADED_FAILURES, 999), 1_000);
        assert_eq!(
            reason_of(&many.status, "Degraded"),
            pair("True", "DeliveryFailing")
        );
        // No second warning while it stays degraded.
        let mut spec_status = old.status.clone();
        spec_status.observed_generation = Some(3);
        let still = {
            let observed = Observed {
                secret: SinkSecret::None,
                workspace: Some(ws()),
                sink: Some(failing(9, 900)),
            };
            let mut i = input(&spec);
            i.status = Some(&spec_status);
            plan(&i, &observed, at(1_030))
        };
        assert!(still.events.is_empty());
        let transition = |s: &EventSinkStatus| {
            conditions::find(&s.conditions, "Degraded").map(|c| c.last_transition_time.clone())
        };
        assert_eq!(transition(&still.status), transition(&old.status));
    }

    #[test]
    fn a_sink_left_on_a_recreated_workspace_is_recreated() {
        let spec = webhook_spec("https://h.example");
        let mut sink = record(desired_sink(&input(&spec)).expect("valid").spec);
        sink.workspace_id = "ws-old".into();
        let observed = Observed {
            secret: SinkSecret::None,
            workspace: Some(ws()),
            sink: Some(sink),
        };
        let p = plan(&input(&spec), &observed, at(1_000));
        assert!(
            matches!(&p.ops[..], [Op::Delete { id }, Op::Put { .. }] if id == "studio/changes"),
            "{:?}",
            p.ops
        );
    }

    #[test]
    fn cleanup_deletes_the_recorded_sink_even_with_an_invalid_spec() {
        let spec = webhook_spec("ftp://not-valid");
        let observed = Observed {
            secret: SinkSecret::None,
            workspace: None,
            sink: Some(record(
                desired_sink(&input(&webhook_spec("https://h.example")))
                    .expect("valid")
                    .spec,
            )),
        };
        assert_eq!(
            plan_cleanup(&input(&spec), &observed),
            [Op::Delete {
                id: "studio/changes".into()
            }]
        );
        assert!(plan_cleanup(&input(&spec), &Observed::default()).is_empty());
    }

    #[test]
    fn a_sealed_secret_is_recorded_and_an_unavailable_one_changes_nothing() {
        let spec = webhook_spec("https://h.example");
        let sealed = SinkSecret::Sealed("c2VhbGVk".into());
        let observed = Observed {
            secret: sealed.clone(),
            workspace: Some(ws()),
            sink: None,
        };
        let p = plan(&input(&spec), &observed, at(1_000));
        let [Op::Put { spec: put, .. }] = &p.ops[..] else {
            panic!("{:?}", p.ops)
        };
        assert_eq!(put.sealed_secret.as_deref(), Some("c2VhbGVk"));

        // Recorded with that very value: nothing to do. Recorded without it: put again.
        let recorded = Observed {
            sink: Some(record(put.clone())),
            ..observed.clone()
        };
        assert!(plan(&input(&spec), &recorded, at(1_001)).ops.is_empty());
        let unsealed = Observed {
            sink: Some(record(desired_sink(&input(&spec)).expect("valid").spec)),
            ..observed
        };
        assert!(matches!(
            &plan(&input(&spec), &unsealed, at(1_001)).ops[..],
            [Op::Put { .. }]
        ));

        // The Secret went away: the recorded sink stays as it is, Ready=False says why, once.
        let gone = Observed {
            secret: SinkSecret::Unavailable("Secret studio/hook does not exist".into()),
            ..recorded
        };
        let p = plan(&input(&spec), &gone, at(1_002));
        assert!(p.ops.is_empty());
        assert_eq!(
            reason_of(&p.status, "Ready"),
            pair("False", reason::SINK_SECRET_UNAVAILABLE)
        );
        let ready = conditions::find(&p.status.conditions, "Ready").unwrap();
        assert!(
            ready.message.starts_with("Secret studio/hook does not exist"),
            "{}",
            ready.message
        );
        assert_eq!(p.events.len(), 1);
        assert_eq!(p.status.position, Some(42), "the recorded sink's status is kept");
        let mut i = input(&spec);
        i.status = Some(&p.status);
        assert!(plan(&i, &gone, at(1_003)).events.is_empty());
    }
}
