//! EventSink reconciles: against kube's mock API server (tower-test) over the real metadata
//! store (PostgreSQL from the testkit, the engine's `PgMetaStore`, the operator's adapter), the
//! store-only sync over PostgreSQL, and properties over the in-memory store.
//!
//! The relay is played by the test through the store's own lease and delivery calls
//! (`claim_event_sink`, `record_sink_failure`, `record_sink_delivery`), as
//! `studiodrive-csi relay` makes them.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::mock::{context_with, expect};
use common::*;
use drive::meta::Delivery;
use drive::relay::{EventFilter, SinkSpec, SinkTarget};
use drive_testkit::pg::PgServer;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use operator::crd::{
    DeletionPolicy, EventSink, EventSinkFilter, EventSinkStatus, NatsSink, WorkspaceKind, conditions,
};
use operator::plan::eventsink::{Input, NO_RELAY_MESSAGE, STATUS_POLL};
use operator::reconcile::{self, EventSinks, Workspaces};
use operator::store::StudioStore;
use operator::store::memory::MemoryStore;
use proptest::prelude::*;
use serde_json::json;

const SINK: &str = "/apis/studiodrive.dev/v1alpha1/namespaces/studio/eventsinks/review-hook";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/studio/events";
const ID: &str = "studio/review-hook";
const URL: &str = "https://hooks.example.com/studiodrive";
const LEASE: Duration = Duration::from_secs(60);

async fn with_workspace<S: StudioStore>(store: &S) {
    let w = workspace(
        "studio",
        "shot010",
        workspace_spec(WorkspaceKind::Team, DeletionPolicy::Retain),
    );
    let input = operator::plan::workspace::Input {
        namespace: "studio",
        name: "shot010",
        generation: 1,
        spec: &w.spec,
        status: None,
    };
    reconcile::sync(&Workspaces(NO_KEYS), store, &input, at(1))
        .await
        .expect("workspace");
}

fn input(s: &EventSink) -> Input<'_> {
    Input {
        namespace: s.metadata.namespace.as_deref().unwrap_or_default(),
        name: s.metadata.name.as_deref().unwrap_or_default(),
        generation: s.metadata.generation.unwrap_or_default(),
        spec: &s.spec,
        status: s.status.as_ref(),
    }
}

fn hook() -> EventSink {
    let mut s = event_sink("studio", "review-hook", "shot010", URL);
    s.metadata.finalizers = Some(vec!["studiodrive.dev/cleanup".into()]);
    s
}

fn reason(status: &EventSinkStatus, type_: &str) -> (String, String, String) {
    let c = conditions::find(&status.conditions, type_).unwrap_or_else(|| panic!("no {type_}"));
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

fn requeue(action: &Action, after: Duration) {
    assert_eq!(format!("{action:?}"), format!("{:?}", Action::requeue(after)));
}

/// Two minutes ahead of the database's clock: a run of failures the store began "now" is
/// past the 60 s threshold for the operator.
fn two_minutes_ahead() -> Timestamp {
    Timestamp::now() + SignedDuration::from_secs(120)
}

#[tokio::test]
async fn an_event_sink_reconciles_into_postgres_reports_no_relay_then_degraded_and_is_removed_on_deletion() {
    let (meta, adapter) = store_on(PgServer::shared()).await;
    with_workspace(&adapter).await;
    let (ctx, mut handle) = context_with(adapter, two_minutes_ahead);

    // 1. Recorded in the store; no relay holds it: Ready=False NoRelay, a Created event.
    let mut status_sent = json!(null);
    let server = async {
        let (query, body) = expect(
            &mut handle,
            "PATCH",
            &format!("{SINK}/status"),
            &serde_json::to_value(hook()).expect("json"),
        )
        .await;
        assert!(query.contains("fieldManager=studiodrive"), "{query}");
        assert_eq!(body["kind"], "EventSink");
        status_sent = body["status"].clone();
        let (_, event) = expect(&mut handle, "POST", EVENTS, &json!({})).await;
        assert_eq!(event["reason"], "Created");
        assert_eq!(event["type"], "Normal");
    };
    let (result, ()) = tokio::join!(
        reconcile::reconcile::<EventSinks, _>(Arc::new(hook()), ctx.clone()),
        server
    );
    requeue(&result.expect("reconcile"), STATUS_POLL);
    let status: EventSinkStatus = serde_json::from_value(status_sent).expect("status");
    let (ready, why, message) = reason(&status, "Ready");
    assert_eq!((ready.as_str(), why.as_str()), ("False", "NoRelay"));
    assert_eq!(message, NO_RELAY_MESSAGE);
    assert_eq!(reason(&status, "Degraded").0, "False");
    assert_eq!(status.endpoint.as_deref(), Some(URL));
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.relay, None);

    let stored = meta.event_sink(ID).await.expect("read").expect("recorded");
    let ws = meta.get_workspace("studio.shot010").await.expect("workspace");
    assert_eq!(stored.workspace, ws.id);
    assert_eq!(
        stored.spec,
        SinkSpec {
            target: SinkTarget::Webhook { url: URL.into() },
            filter: EventFilter {
                path_prefixes: vec!["/comp".into()],
                kinds: Vec::new(),
            },
            sealed_secret: None,
        }
    );
    assert_eq!(status.position, Some(stored.position));

    // 2. A relay takes the lease and fails a delivery; the run is older than the threshold
    //    by the operator's clock: Degraded=True with the relay's last error.
    let error = format!("POST {URL}: 503 Service Unavailable");
    assert!(
        meta.claim_event_sink(ID, "relay-0", LEASE)
            .await
            .expect("claim")
            .is_some()
    );
    assert!(
        meta.record_sink_failure(ID, "relay-0", &error, LEASE)
            .await
            .expect("record failure")
    );
    let mut seen = hook();
    seen.status = Some(status);
    let mut degraded_sent = json!(null);
    let server = async {
        let (_, body) = expect(
            &mut handle,
            "PATCH",
            &format!("{SINK}/status"),
            &serde_json::to_value(hook()).expect("json"),
        )
        .await;
        degraded_sent = body["status"].clone();
        let (_, event) = expect(&mut handle, "POST", EVENTS, &json!({})).await;
        assert_eq!(event["reason"], "DeliveryFailing");
        assert_eq!(event["type"], "Warning");
        assert_eq!(event["note"], error.as_str());
    };
    let (result, ()) = tokio::join!(
        reconcile::reconcile::<EventSinks, _>(Arc::new(seen.clone()), ctx.clone()),
        server
    );
    requeue(&result.expect("reconcile"), STATUS_POLL);
    let status: EventSinkStatus = serde_json::from_value(degraded_sent).expect("status");
    assert_eq!(
        reason(&status, "Degraded"),
        ("True".into(), "DeliveryFailing".into(), error.clone())
    );
    assert_eq!(reason(&status, "Ready").1, "DeliveryFailing");
    assert_eq!(status.relay.as_deref(), Some("relay-0"));
    assert_eq!(status.consecutive_failures, 1);
    assert_eq!(status.last_error.as_deref(), Some(error.as_str()));
    assert!(status.failing_since.is_some());

    // 3. Deleted: the sink leaves the store, then the finalizer goes.
    let mut deleting = hook();
    deleting.status = Some(status);
    deleting.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    let server = async {
        let (_, event) = expect(&mut handle, "POST", EVENTS, &json!({})).await;
        assert_eq!(event["reason"], "Deleted");
        let mut gone = deleting.clone();
        gone.metadata.finalizers = None;
        let (_, patch) = expect(
            &mut handle,
            "PATCH",
            SINK,
            &serde_json::to_value(gone).expect("json"),
        )
        .await;
        assert!(
            patch
                .as_array()
                .expect("JSON patch")
                .iter()
                .any(|op| op["op"] == "remove"),
            "{patch}"
        );
    };
    let (result, ()) = tokio::join!(
        reconcile::reconcile::<EventSinks, _>(Arc::new(deleting.clone()), ctx.clone()),
        server
    );
    result.expect("cleanup");
    assert_eq!(meta.event_sink(ID).await.expect("read"), None);
}

#[tokio::test]
async fn sync_over_postgres_waits_for_the_workspace_updates_in_place_refuses_bad_specs_and_cleans_up() {
    let (meta, store) = store_on(PgServer::shared()).await;
    let mut s = event_sink("studio", "review-hook", "shot010", URL);

    // No workspace yet: nothing stored, rechecked later.
    let waiting = reconcile::sync(&NO_SINK_SECRETS, &store, &input(&s), at(10))
        .await
        .expect("sync");
    assert_eq!(reason(&waiting.status, "Ready").1, "WorkspaceNotFound");
    assert_eq!(waiting.requeue, Some(Duration::from_secs(30)));
    assert_eq!(meta.event_sink(ID).await.expect("read"), None);

    with_workspace(&store).await;
    let first = reconcile::sync(&NO_SINK_SECRETS, &store, &input(&s), at(20))
        .await
        .expect("sync");
    assert_eq!(reason(&first.status, "Ready").1, "NoRelay");
    let created = meta.event_sink(ID).await.expect("read").expect("recorded");

    // A relay delivers: Ready=True, the counts in the status.
    meta.claim_event_sink(ID, "relay-1", LEASE)
        .await
        .expect("claim")
        .expect("taken");
    let delivery = Delivery {
        position: created.position + 3,
        delivered: 2,
        filtered: 1,
        last_event_at: None,
    };
    assert!(
        meta.record_sink_delivery(ID, "relay-1", &delivery, LEASE)
            .await
            .expect("record")
    );
    s.status = Some(first.status);
    let delivering = reconcile::sync(&NO_SINK_SECRETS, &store, &input(&s), at(30))
        .await
        .expect("sync");
    let st = &delivering.status;
    assert_eq!(reason(st, "Ready").0, "True", "{:?}", st.conditions);
    assert_eq!(reason(st, "Ready").1, "Delivering");
    assert_eq!((st.delivered, st.filtered), (2, 1));
    assert_eq!(st.position, Some(created.position + 3));
    assert!(st.last_delivered_at.is_some());
    assert_eq!(st.relay.as_deref(), Some("relay-1"));

    // The filter changes: the spec is replaced, the position and counts are kept.
    s.spec.filter = EventSinkFilter {
        path_prefixes: vec!["/plates".into()],
        kinds: vec!["create".into()],
    };
    s.status = Some(delivering.status.clone());
    let updated = reconcile::sync(&NO_SINK_SECRETS, &store, &input(&s), at(40))
        .await
        .expect("sync");
    assert!(updated.events.iter().any(|e| e.reason == "Updated"));
    let after = meta.event_sink(ID).await.expect("read").expect("recorded");
    assert_eq!(after.spec.filter.path_prefixes, ["/plates"]);
    assert_eq!(after.spec.filter.kinds, ["create"]);
    assert_eq!((after.position, after.delivered), (created.position + 3, 2));

    // Both targets (past CEL): InvalidSpec, the store keeps what it had.
    let mut both = s.clone();
    both.spec.nats = Some(NatsSink {
        url: "nats://nats:4222".into(),
        subject: "studio".into(),
        stream: None,
        credentials_secret_ref: None,
    });
    let invalid = reconcile::sync(&NO_SINK_SECRETS, &store, &input(&both), at(50))
        .await
        .expect("sync");
    assert_eq!(reason(&invalid.status, "Ready").1, "InvalidSpec");
    assert_eq!(
        meta.event_sink(ID).await.expect("read").expect("kept").spec,
        after.spec
    );

    // Cleanup removes it; a second cleanup has nothing to do.
    let ops = reconcile::cleanup(&NO_SINK_SECRETS, &store, &input(&s))
        .await
        .expect("cleanup");
    assert_eq!(ops.len(), 1);
    assert_eq!(meta.event_sink(ID).await.expect("read"), None);
    assert!(
        reconcile::cleanup(&NO_SINK_SECRETS, &store, &input(&s))
            .await
            .expect("cleanup")
            .is_empty()
    );
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// For any spec (valid or not), syncing twice writes nothing the second time and yields
    /// the same status, with observedGeneration equal to metadata.generation; a valid spec
    /// ends up in the store exactly as the planner computed it.
    #[test]
    fn syncing_an_event_sink_twice_is_a_no_op(
        name in "[a-z][a-z0-9-]{0,20}|[A-Z_/]{1,5}",
        url in "(https?|ftp|nats)://[a-z]{1,8}(:[0-9]{2,4})?(/[a-z]{0,6})?",
        prefixes in proptest::collection::vec("/?[a-z]{0,5}(/[a-z]{1,4})?/?", 0..3),
        kinds in proptest::collection::vec("[a-z.]{1,8}|[A-Z]{1,3}", 0..3),
        generation in 1i64..1000,
        workspace_exists in any::<bool>(),
    ) {
        rt().block_on(async {
            let store = MemoryStore::default();
            if workspace_exists {
                with_workspace(&store).await;
            }
            let mut s = event_sink("studio", &name, "shot010", &url);
            s.spec.filter = EventSinkFilter { path_prefixes: prefixes, kinds };
            s.metadata.generation = Some(generation);
            let first = reconcile::sync(&NO_SINK_SECRETS, &store, &input(&s), at(5)).await.expect("sync");
            prop_assert_eq!(first.status.observed_generation, Some(generation));
            s.status = Some(first.status.clone());
            let writes = store.writes();
            let second = reconcile::sync(&NO_SINK_SECRETS, &store, &input(&s), at(6)).await.expect("sync");
            prop_assert_eq!(store.writes(), writes);
            prop_assert_eq!(&second.status, &first.status);
            let stored = store.get_event_sink(&format!("studio/{name}")).await.expect("read");
            match operator::plan::eventsink::desired_sink(&input(&s)) {
                Ok(desired) if workspace_exists => {
                    prop_assert_eq!(stored.map(|r| r.spec), Some(desired.spec));
                }
                _ => prop_assert_eq!(stored, None),
            }
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn a_sink_on_a_recreated_workspace_is_recreated_on_the_new_one() {
    let store = MemoryStore::default();
    with_workspace(&store).await;
    let s = event_sink("studio", "review-hook", "shot010", URL);
    reconcile::sync(&NO_SINK_SECRETS, &store, &input(&s), at(1))
        .await
        .expect("sync");
    let old = store.get_event_sink(ID).await.expect("read").expect("recorded");
    store.delete_workspace("studio.shot010").await.expect("delete");
    with_workspace(&store).await;
    let p = reconcile::sync(&NO_SINK_SECRETS, &store, &input(&s), at(2))
        .await
        .expect("sync");
    assert!(p.events.iter().any(|e| e.reason == "Recreated"), "{:?}", p.events);
    let new = store.get_event_sink(ID).await.expect("read").expect("recorded");
    assert_ne!(new.workspace_id, old.workspace_id);
    assert_eq!(
        new.workspace_id,
        store.workspace("studio.shot010").expect("ws").id
    );
}

// Catches: a sink credential recorded in clear or from an unlabelled Secret (a tenant who may
// create EventSinks sending a Secret it cannot read to its own endpoint), a sealed value
// rewritten on every reconcile, a rotated Secret never re-sealed, an unusable value recorded
// or echoed in a condition.
#[tokio::test]
async fn sink_credentials_are_sealed_from_labelled_secrets_only_and_resealed_on_rotation() {
    use operator::crd::SecretKeyRef;
    use operator::keys::StaticKeySource;
    use operator::reconcile::eventsink::SINK_CREDENTIAL_LABEL;
    let (meta, store) = store_on(PgServer::shared()).await;
    with_workspace(&store).await;
    let mut s = hook();
    s.spec.webhook.as_mut().unwrap().signing_secret_ref = Some(SecretKeyRef {
        name: "hook-signing".into(),
        key: "secret".into(),
    });
    let key = drive::data::Kek::generate();
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let kind = |secrets: StaticKeySource, sealing: Option<&drive::data::Kek>| EventSinks {
        keys: secrets,
        sealing_key: sealing.cloned(),
    };
    let labelled = |value: &str| {
        StaticKeySource::new()
            .with("studio", "hook-signing", "secret", value)
            .labelled("studio", "hook-signing", SINK_CREDENTIAL_LABEL, "true")
    };
    let unavailable = |plan: &operator::plan::Plan<_, EventSinkStatus>| {
        let (status, why, message) = reason(&plan.status, "Ready");
        assert_eq!(
            (status.as_str(), why.as_str()),
            ("False", "SinkSecretUnavailable")
        );
        assert!(!message.contains("MfKQ9r8"), "{message}");
        message
    };

    // Not labelled, no sealing key, a value too short to sign with: nothing recorded.
    let unlabelled = StaticKeySource::new().with("studio", "hook-signing", "secret", secret);
    let p = reconcile::sync(&kind(unlabelled, Some(&key)), &store, &input(&s), at(1))
        .await
        .expect("sync");
    assert!(unavailable(&p).contains(SINK_CREDENTIAL_LABEL));
    let p = reconcile::sync(&kind(labelled(secret), None), &store, &input(&s), at(2))
        .await
        .expect("sync");
    assert!(unavailable(&p).contains("--sink-secret-key-file"));
    let p = reconcile::sync(
        &kind(labelled("whsec_c2hvcnQ="), Some(&key)),
        &store,
        &input(&s),
        at(3),
    )
    .await
    .expect("sync");
    assert!(unavailable(&p).contains("16 bytes"));
    assert_eq!(meta.event_sink(ID).await.expect("read"), None);

    // Labelled: recorded sealed; the same Secret again leaves the sealed value as it was.
    reconcile::sync(&kind(labelled(secret), Some(&key)), &store, &input(&s), at(4))
        .await
        .expect("sync");
    let first = meta.event_sink(ID).await.expect("read").expect("recorded");
    let sealed = first.spec.sealed_secret.clone().expect("sealed");
    assert!(!serde_json::to_string(&first.spec).unwrap().contains("MfKQ9r8"));
    assert_eq!(
        drive::relay::open_secret(&key, ID, &sealed).unwrap(),
        secret.as_bytes()
    );
    let again = reconcile::sync(&kind(labelled(secret), Some(&key)), &store, &input(&s), at(5))
        .await
        .expect("sync");
    assert!(again.events.is_empty(), "{:?}", again.events);
    assert_eq!(meta.event_sink(ID).await.expect("read").unwrap().spec, first.spec);

    // Rotated: sealed again, the position kept. Then the Secret goes: the sink keeps the last.
    let rotated = "whsec_c2Vjb25kLXNpZ25pbmcta2V5LTEyMzQ=";
    reconcile::sync(&kind(labelled(rotated), Some(&key)), &store, &input(&s), at(6))
        .await
        .expect("sync");
    let second = meta.event_sink(ID).await.expect("read").expect("recorded");
    let resealed = second.spec.sealed_secret.clone().expect("sealed");
    assert_eq!(
        drive::relay::open_secret(&key, ID, &resealed).unwrap(),
        rotated.as_bytes()
    );
    assert_eq!(second.position, first.position);
    let p = reconcile::sync(
        &kind(StaticKeySource::new(), Some(&key)),
        &store,
        &input(&s),
        at(7),
    )
    .await
    .expect("sync");
    assert!(unavailable(&p).contains("does not exist"));
    assert_eq!(
        meta.event_sink(ID).await.expect("read").unwrap().spec,
        second.spec
    );
}
