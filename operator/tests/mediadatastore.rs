//! MediaDataStore reconciles: against kube's mock API server (tower-test) over the real
//! metadata store (PostgreSQL from the testkit, the engine's `PgMetaStore`, the operator's
//! adapter), the store-only sync and cleanup over PostgreSQL, and the same refusals over the
//! in-memory store, whose model must agree with the engine.
//!
//! Documents are written the way a client of the store writes them
//! (`PgMetaStore::put_media_document`); the operator never writes documents.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::mock::{context, context_with, expect};
use common::*;
use drive::{MetaConfig, PgMetaStore};
use drive_testkit::pg::PgServer;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use operator::crd::{DeletionPolicy, MediaDataStore, MediaDataStoreStatus, conditions};
use operator::plan::mediadatastore::Input;
use operator::reconcile::{self, MediaDataStores, ReconcileError};
use operator::store::drive_adapter::MetaStoreAdapter;
use operator::store::memory::MemoryStore;
use operator::store::{DataStoreRefusal, PutDataStoreError, StoreErrorKind, StudioStore};
use proptest::prelude::*;
use serde_json::{Value, json};

const MDS: &str = "/apis/studiodrive.dev/v1alpha1/namespaces/studio/mediadatastores/shots";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/studio/events";
const NAME: &str = "studio/shots";

fn input(d: &MediaDataStore) -> Input<'_> {
    Input {
        namespace: d.metadata.namespace.as_deref().unwrap_or_default(),
        name: d.metadata.name.as_deref().unwrap_or_default(),
        generation: d.metadata.generation.unwrap_or_default(),
        spec: &d.spec,
        status: d.status.as_ref(),
    }
}

fn finalized(policy: DeletionPolicy) -> MediaDataStore {
    let mut d = media_datastore("studio", "shots", policy);
    d.metadata.finalizers = Some(vec!["studiodrive.dev/cleanup".into()]);
    d
}

fn ready(status: &MediaDataStoreStatus) -> (String, String, String) {
    let c = conditions::find(&status.conditions, "Ready").expect("Ready");
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

fn requeue(action: &Action, after: Duration) {
    assert_eq!(format!("{action:?}"), format!("{:?}", Action::requeue(after)));
}

/// The next generation of `d`, as the API server makes it after a spec edit, with the status
/// the operator wrote last.
fn edited(
    d: &MediaDataStore,
    status: &MediaDataStoreStatus,
    edit: impl FnOnce(&mut MediaDataStore),
) -> MediaDataStore {
    let mut next = d.clone();
    edit(&mut next);
    next.metadata.generation = next.metadata.generation.map(|g| g + 1);
    next.status = Some(status.clone());
    next
}

/// A document schema that `{"fps": 24, ...}` fails: fps must be a string.
fn fps_as_string(d: &mut MediaDataStore) {
    d.spec.schema["properties"]["fps"] = json!({"type": "string"});
    d.spec.version = 2;
}

/// A compatible change: an optional field more.
fn with_reviewed(d: &mut MediaDataStore) {
    d.spec.schema["properties"]["reviewed"] = json!({"type": "boolean"});
    d.spec.version = 2;
}

/// Runs `reconcile` against the scripted API server `server`. A reconcile that stops sending
/// before the script ends fails the test at the deadline instead of hanging it (the mock
/// client stays alive in the context, so the script would wait for ever).
async fn scripted<R>(
    reconcile: impl std::future::Future<Output = R>,
    server: impl std::future::Future<Output = ()>,
) -> R {
    let both = async { tokio::join!(reconcile, server).0 };
    tokio::time::timeout(Duration::from_secs(60), both)
        .await
        .expect("the reconcile sent every request the script expects")
}

fn shot_document() -> Value {
    json!({"fps": 24, "shots": [{"start": 0, "end": 48}, {"start": 48, "end": 96}]})
}

// Catches: a schema change that orphans a stored document taken by the store; the refusal
// written as a generic StoreError (or not at all); a status that claims the new version; a
// refusal retried in a hot loop or with an event per retry; a compatible change not taken
// after a refusal.
#[tokio::test]
async fn a_schema_a_stored_document_fails_is_refused_with_its_id_and_path_and_a_compatible_one_accepted() {
    let (meta, adapter) = store_on(PgServer::shared()).await;
    let (ctx, mut handle) = context_with(adapter, || at(1_000));
    let d = finalized(DeletionPolicy::Retain);

    // 1. Recorded: Ready=True Accepted, version 1, a Created event.
    let mut sent = Value::Null;
    let server = async {
        let (query, body) = expect(
            &mut handle,
            "PATCH",
            &format!("{MDS}/status"),
            &serde_json::to_value(&d).expect("json"),
        )
        .await;
        assert!(
            query.contains("fieldManager=studiodrive") && query.contains("force=true"),
            "{query}"
        );
        assert_eq!(body["kind"], "MediaDataStore");
        sent = body["status"].clone();
        let (_, event) = expect(&mut handle, "POST", EVENTS, &json!({})).await;
        assert_eq!(event["reason"], "Created");
    };
    let result = scripted(
        reconcile::reconcile::<MediaDataStores, _>(Arc::new(d.clone()), ctx.clone()),
        server,
    )
    .await;
    requeue(&result.expect("reconcile"), Duration::from_secs(300));
    let accepted: MediaDataStoreStatus = serde_json::from_value(sent).expect("status");
    assert_eq!(ready(&accepted).1, "Accepted");
    assert_eq!(accepted.store_name.as_deref(), Some(NAME));
    assert_eq!(accepted.version, Some(1));
    let stored = meta.media_datastore(NAME).await.expect("read").expect("recorded");
    assert_eq!(stored.spec.schema, shots_schema());
    assert_eq!(
        stored.spec.access.writers,
        ["ServiceAccount:studio/shot-detector"]
    );
    assert_eq!(stored.spec.access.readers, ["Group:review"]);

    // 2. A client files a document under the DataStore.
    let doc = meta
        .put_media_document(NAME, &json!({"asset": "sh010"}), None, &shot_document())
        .await
        .expect("document");

    // 3. A schema that document fails: refused, with its id and the JSON path of the error.
    let refused_obj = edited(&d, &accepted, fps_as_string);
    let mut sent = Value::Null;
    let server = async {
        let (_, body) = expect(
            &mut handle,
            "PATCH",
            &format!("{MDS}/status"),
            &serde_json::to_value(&refused_obj).expect("json"),
        )
        .await;
        sent = body["status"].clone();
        let (_, event) = expect(&mut handle, "POST", EVENTS, &json!({})).await;
        assert_eq!(event["reason"], "SchemaRefused");
        assert_eq!(event["type"], "Warning");
        assert!(
            event["note"]
                .as_str()
                .unwrap_or_default()
                .contains(&doc.id.to_string()),
            "{event}"
        );
    };
    let result = scripted(
        reconcile::reconcile::<MediaDataStores, _>(Arc::new(refused_obj.clone()), ctx.clone()),
        server,
    )
    .await;
    let err = result.expect_err("refused");
    assert_eq!(err.label(), "schema_refused");
    assert!(matches!(&err, ReconcileError::Finalizer(_)), "{err:?}");
    let refused: MediaDataStoreStatus = serde_json::from_value(sent).expect("status");
    let (status, why, message) = ready(&refused);
    assert_eq!((status.as_str(), why.as_str()), ("False", "SchemaRefused"));
    assert!(message.contains(&doc.id.to_string()), "{message}");
    assert!(message.contains("/fps"), "the JSON path of the error: {message}");
    assert!(message.contains("nothing was changed"), "{message}");
    assert_eq!(refused.observed_generation, Some(2));
    assert_eq!(refused.version, Some(1), "the accepted version stays");
    assert!(!conditions::is_true(&refused.conditions, "Degraded"));
    let kept = meta.media_datastore(NAME).await.expect("read").expect("kept");
    assert_eq!(kept.spec.schema, shots_schema(), "the stored schema is unchanged");
    assert_eq!(kept.spec.version, 1);
    assert!(meta.media_document(doc.id).await.expect("read").is_some());

    // The retry: refused again, nothing written (same status, no second event), backoff grows.
    let mut seen = refused_obj.clone();
    seen.status = Some(refused.clone());
    let seen = Arc::new(seen);
    tokio::select! {
        biased;
        result = reconcile::reconcile::<MediaDataStores, _>(seen.clone(), ctx.clone()) => {
            let err = result.expect_err("refused again");
            let policy = reconcile::error_policy::<MediaDataStore, MetaStoreAdapter>;
            requeue(&policy(seen.clone(), &err, ctx.clone()), Duration::from_secs(5));
            requeue(&policy(seen.clone(), &err, ctx.clone()), Duration::from_secs(10));
        }
        request = handle.next_request() => panic!("a retry sends nothing: {:?}", request.map(|(r, _)| r.uri().clone())),
    }

    // 4. A compatible change instead: accepted, the version moves, the backoff is reset.
    let mut compatible = edited(&d, &refused, with_reviewed);
    compatible.metadata.generation = Some(3);
    let mut sent = Value::Null;
    let server = async {
        let (_, body) = expect(
            &mut handle,
            "PATCH",
            &format!("{MDS}/status"),
            &serde_json::to_value(&compatible).expect("json"),
        )
        .await;
        sent = body["status"].clone();
        let (_, updated) = expect(&mut handle, "POST", EVENTS, &json!({})).await;
        assert_eq!(updated["reason"], "Updated");
        let (_, back) = expect(&mut handle, "POST", EVENTS, &json!({})).await;
        assert_eq!(back["reason"], "Accepted");
    };
    let result = scripted(
        reconcile::reconcile::<MediaDataStores, _>(Arc::new(compatible.clone()), ctx.clone()),
        server,
    )
    .await;
    result.expect("accepted");
    let status: MediaDataStoreStatus = serde_json::from_value(sent).expect("status");
    assert_eq!(ready(&status).0, "True");
    assert_eq!(ready(&status).1, "Accepted");
    assert_eq!(status.version, Some(2));
    assert_eq!(status.observed_generation, Some(3));
    let changed = meta.media_datastore(NAME).await.expect("read").expect("kept");
    assert_eq!(changed.spec.version, 2);
    assert_eq!(
        changed.spec.schema["properties"]["reviewed"],
        json!({"type": "boolean"})
    );
    assert_eq!(changed.id, stored.id);
    let policy = reconcile::error_policy::<MediaDataStore, MetaStoreAdapter>;
    requeue(
        &policy(seen, &ReconcileError::MissingField("x"), ctx.clone()),
        Duration::from_secs(5),
    );
}

// Catches: a mediaIdSchema change that slipped past CEL (or a DataStore adopted with another
// one) reaching the store, or being reported as an invalid spec; the store's own refusal of it
// misclassified.
#[tokio::test]
async fn a_changed_media_id_schema_is_refused_and_nothing_changes() {
    let (meta, store) = store_on(PgServer::shared()).await;
    let d = media_datastore("studio", "shots", DeletionPolicy::Retain);
    let first = reconcile::sync(&MediaDataStores, &store, &input(&d), at(1))
        .await
        .expect("create");
    let other_ids = edited(&d, &first.status, |d| {
        d.spec.media_id_schema = json_object(json!({"type": "object", "required": ["uuid"]}));
        d.spec.version = 2;
    });
    let p = reconcile::sync(&MediaDataStores, &store, &input(&other_ids), at(2))
        .await
        .expect("planned");
    let (status, why, message) = ready(&p.status);
    assert_eq!(
        (status.as_str(), why.as_str()),
        ("False", "MediaIdSchemaImmutable")
    );
    assert!(message.contains(NAME), "{message}");
    assert_eq!(p.status.version, Some(1));
    assert!(
        p.events
            .iter()
            .any(|e| e.warning && e.reason == "MediaIdSchemaImmutable")
    );
    let kept = meta.media_datastore(NAME).await.expect("read").expect("kept");
    assert_eq!(kept.spec.media_id_schema["required"], json!(["asset"]));
    assert_eq!(kept.spec.version, 1);

    // Put straight through the adapter (a race with another client): the store's refusal is
    // classified as the same reason.
    let wanted = operator::plan::mediadatastore::desired_datastore(&input(&other_ids)).expect("valid");
    match store.put_media_datastore(&wanted).await {
        Err(PutDataStoreError::Refused(DataStoreRefusal::MediaIdSchemaImmutable(m))) => {
            assert!(m.contains("media id schema cannot change"), "{m}");
        }
        other => panic!("expected MediaIdSchemaImmutable, got {other:?}"),
    }
}

// Catches: Retain deleting documents; Delete leaving documents or the DataStore behind; two
// namespaces' DataStores of one name sharing anything.
#[tokio::test]
async fn deletion_keeps_everything_with_retain_and_removes_only_its_own_datastore_with_delete() {
    let (meta, store) = store_on(PgServer::shared()).await;
    let here = media_datastore("studio", "shots", DeletionPolicy::Retain);
    let mut there = media_datastore("other", "shots", DeletionPolicy::Delete);
    // Another team, another schema: fps as a string.
    fps_as_string(&mut there);
    for d in [&here, &there] {
        reconcile::sync(&MediaDataStores, &store, &input(d), at(1))
            .await
            .expect("create");
    }
    let ours = meta
        .put_media_document("studio/shots", &json!({"asset": "sh010"}), None, &shot_document())
        .await
        .expect("document");
    let theirs = meta
        .put_media_document(
            "other/shots",
            &json!({"asset": "sh010"}),
            None,
            &json!({"fps": "24", "shots": []}),
        )
        .await
        .expect("document");
    // Each DataStore's schema is its own: ours refuses their document and the other way round.
    assert!(
        meta.put_media_document(
            "studio/shots",
            &json!({"asset": "x"}),
            None,
            &json!({"fps": "24", "shots": []})
        )
        .await
        .is_err()
    );

    // Retain: nothing leaves the store, and the recreated resource adopts it.
    let ops = reconcile::cleanup(&MediaDataStores, &store, &input(&here))
        .await
        .expect("cleanup");
    assert!(ops.is_empty());
    assert!(
        meta.media_datastore("studio/shots")
            .await
            .expect("read")
            .is_some()
    );
    assert!(meta.media_document(ours.id).await.expect("read").is_some());
    let adopted = reconcile::sync(&MediaDataStores, &store, &input(&here), at(2))
        .await
        .expect("adopt");
    assert_eq!(ready(&adopted.status).1, "Accepted");

    // Delete: the other namespace's DataStore and its documents go; ours stay.
    let ops = reconcile::cleanup(&MediaDataStores, &store, &input(&there))
        .await
        .expect("cleanup");
    assert_eq!(ops.len(), 1);
    assert_eq!(meta.media_datastore("other/shots").await.expect("read"), None);
    assert_eq!(meta.media_document(theirs.id).await.expect("read"), None);
    assert!(meta.media_document(ours.id).await.expect("read").is_some());
    assert!(
        meta.media_datastore("studio/shots")
            .await
            .expect("read")
            .is_some()
    );
    assert!(
        reconcile::cleanup(&MediaDataStores, &store, &input(&there))
            .await
            .expect("cleanup again")
            .is_empty()
    );
}

// Catches: the finalizer dropped while the store is down with Delete (the DataStore and its
// documents would outlive the resource for good), and a Retain deletion (a namespace being
// deleted) held up by an outage although nothing in the store has to change.
#[tokio::test]
async fn with_delete_an_outage_keeps_the_finalizer_until_the_store_delete_succeeded() {
    // Its own server: this test stops it.
    let pg = PgServer::start().expect("start PostgreSQL");
    let (meta, store) = store_on(&pg).await;
    let d = media_datastore("studio", "shots", DeletionPolicy::Delete);
    reconcile::sync(&MediaDataStores, &store, &input(&d), at(1))
        .await
        .expect("create");
    let doc = meta
        .put_media_document(NAME, &json!({"asset": "sh010"}), None, &shot_document())
        .await
        .expect("document");

    pg.stop().expect("stop PostgreSQL");
    let err = reconcile::cleanup(&MediaDataStores, &store, &input(&d))
        .await
        .expect_err("cleanup must fail while the store is down");
    assert!(
        matches!(&err, ReconcileError::Store(e) if e.kind == StoreErrorKind::Unavailable),
        "{err:?}"
    );
    let retained = media_datastore("studio", "shots", DeletionPolicy::Retain);
    assert!(
        reconcile::cleanup(&MediaDataStores, &store, &input(&retained))
            .await
            .expect("Retain needs no store")
            .is_empty()
    );

    pg.resume().expect("restart PostgreSQL");
    assert!(
        meta.media_document(doc.id).await.expect("read").is_some(),
        "nothing was deleted"
    );
    let ops = reconcile::cleanup(&MediaDataStores, &store, &input(&d))
        .await
        .expect("cleanup after recovery");
    assert_eq!(ops.len(), 1);
    assert_eq!(meta.media_datastore(NAME).await.expect("read"), None);
    assert_eq!(meta.media_document(doc.id).await.expect("read"), None);
}

// Catches: a finalizer removed before the store delete (Delete) ran, or kept by an outage that
// Retain does not care about; cleanup events.
#[tokio::test]
async fn over_the_mock_api_the_finalizer_goes_only_after_the_store_delete() {
    let (ctx, mut handle) = context();
    let d = finalized(DeletionPolicy::Delete);
    reconcile::sync(&MediaDataStores, &ctx.store, &input(&d), at(1))
        .await
        .expect("create");
    let mut deleting = d.clone();
    deleting.metadata.deletion_timestamp = Some(Time(at(900)));
    let deleting = Arc::new(deleting);

    ctx.store.set_available(false);
    tokio::select! {
        biased;
        result = reconcile::reconcile::<MediaDataStores, _>(deleting.clone(), ctx.clone()) => {
            assert_eq!(result.expect_err("store down").label(), "store_unavailable");
        }
        request = handle.next_request() => panic!("the finalizer stays: {:?}", request.map(|(r, _)| r.uri().clone())),
    }
    ctx.store.set_available(true);
    assert!(ctx.store.get_media_datastore(NAME).await.expect("read").is_some());

    let server = async {
        let (_, event) = expect(&mut handle, "POST", EVENTS, &json!({})).await;
        assert_eq!(event["reason"], "Deleted");
        let mut gone = (*deleting).clone();
        gone.metadata.finalizers = None;
        let (_, patch) = expect(
            &mut handle,
            "PATCH",
            MDS,
            &serde_json::to_value(gone).expect("json"),
        )
        .await;
        assert!(
            patch
                .as_array()
                .expect("JSON patch")
                .iter()
                .any(|op| op["op"] == "remove" && op["path"] == "/metadata/finalizers/0"),
            "{patch}"
        );
    };
    let result = scripted(
        reconcile::reconcile::<MediaDataStores, _>(deleting.clone(), ctx.clone()),
        server,
    )
    .await;
    result.expect("cleanup");
    assert_eq!(ctx.store.get_media_datastore(NAME).await.expect("read"), None);

    // Retain while the store is down: the finalizer goes, the DataStore stays.
    let (ctx, mut handle) = context();
    let kept = finalized(DeletionPolicy::Retain);
    reconcile::sync(&MediaDataStores, &ctx.store, &input(&kept), at(1))
        .await
        .expect("create");
    let mut deleting = kept.clone();
    deleting.metadata.deletion_timestamp = Some(Time(at(900)));
    ctx.store.set_available(false);
    let server = async {
        let (_, event) = expect(&mut handle, "POST", EVENTS, &json!({})).await;
        assert_eq!(event["reason"], "Retained");
        let mut gone = deleting.clone();
        gone.metadata.finalizers = None;
        expect(
            &mut handle,
            "PATCH",
            MDS,
            &serde_json::to_value(gone).expect("json"),
        )
        .await;
    };
    let result = scripted(
        reconcile::reconcile::<MediaDataStores, _>(Arc::new(deleting.clone()), ctx.clone()),
        server,
    )
    .await;
    result.expect("Retain cleanup without the store");
    ctx.store.set_available(true);
    assert!(ctx.store.get_media_datastore(NAME).await.expect("read").is_some());
}

// Catches: the in-memory model of the store disagreeing with the engine on what it refuses
// and how it says it (the kube mock and property tests rely on the model).
#[tokio::test]
async fn the_in_memory_store_refuses_what_postgres_refuses_with_the_same_message() {
    let (meta, pg) = store_on(PgServer::shared()).await;
    let mem = MemoryStore::default();
    let d = media_datastore("studio", "shots", DeletionPolicy::Retain);
    let wanted = operator::plan::mediadatastore::desired_datastore(&input(&d)).expect("valid");
    let refused = edited(&d, &MediaDataStoreStatus::default(), fps_as_string);
    let refused = operator::plan::mediadatastore::desired_datastore(&input(&refused)).expect("valid");
    let compatible = edited(&d, &MediaDataStoreStatus::default(), with_reviewed);
    let compatible = operator::plan::mediadatastore::desired_datastore(&input(&compatible)).expect("valid");

    pg.put_media_datastore(&wanted).await.expect("put");
    mem.put_media_datastore(&wanted).await.expect("put");
    let pg_doc = meta
        .put_media_document(NAME, &json!({"asset": "sh010"}), None, &shot_document())
        .await
        .expect("document")
        .id;
    let mem_doc = mem.put_media_document(NAME, shot_document()).expect("document");
    // The model checks documents on write as the engine does.
    assert!(mem.put_media_document(NAME, json!({"fps": 24})).is_err());

    let message = |r: Result<_, PutDataStoreError>, doc: uuid::Uuid| match r {
        Err(PutDataStoreError::Refused(DataStoreRefusal::SchemaRefused(m))) => {
            m.replace(&doc.to_string(), "<doc>")
        }
        other => panic!("expected SchemaRefused, got {other:?}"),
    };
    let from_pg = message(pg.put_media_datastore(&refused).await, pg_doc);
    let from_mem = message(mem.put_media_datastore(&refused).await, mem_doc);
    assert_eq!(from_pg, from_mem);
    assert!(from_pg.starts_with("DataStore studio/shots: stored document <doc> does not pass the new schema: the document is invalid at /fps"), "{from_pg}");

    for store_version in [
        pg.put_media_datastore(&compatible)
            .await
            .expect("compatible")
            .spec
            .version,
        mem.put_media_datastore(&compatible)
            .await
            .expect("compatible")
            .spec
            .version,
    ] {
        assert_eq!(store_version, 2);
    }
    // What the store holds again writes nothing in the model.
    let writes = mem.writes();
    mem.put_media_datastore(&compatible).await.expect("same");
    assert_eq!(mem.writes(), writes);
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
    /// the same status, with observedGeneration equal to metadata.generation; a valid spec is
    /// in the store exactly as the planner computed it.
    #[test]
    fn syncing_a_media_datastore_twice_is_a_no_op(
        name in "[a-z][a-z0-9-]{0,20}|[A-Z_/]{1,5}",
        analysis in "[a-z-]{1,12}|[a-z ]{1,6}",
        version in 0u32..4,
        queryable in proptest::collection::vec("[a-z]{1,4}(\\.[a-z0-9]{1,3})?|\\.{1,2}", 0..4),
        readers in proptest::collection::vec("[a-z:/]{0,6}", 0..3),
        generation in 1i64..1000,
    ) {
        rt().block_on(async {
            let store = MemoryStore::default();
            let mut d = media_datastore("studio", &name, DeletionPolicy::Retain);
            d.spec.analysis_type = analysis;
            d.spec.version = version;
            d.spec.queryable = queryable;
            d.spec.readers = readers
                .into_iter()
                .map(|r| operator::crd::Subject { kind: operator::crd::SubjectKind::User, name: r, namespace: None })
                .collect();
            d.metadata.generation = Some(generation);
            let first = reconcile::sync(&MediaDataStores, &store, &input(&d), at(5)).await.expect("sync");
            prop_assert_eq!(first.status.observed_generation, Some(generation));
            d.status = Some(first.status.clone());
            let writes = store.writes();
            let second = reconcile::sync(&MediaDataStores, &store, &input(&d), at(6)).await.expect("sync");
            prop_assert_eq!(store.writes(), writes);
            prop_assert_eq!(&second.status, &first.status);
            let stored = store.get_media_datastore(&format!("studio/{name}")).await.expect("read");
            match operator::plan::mediadatastore::desired_datastore(&input(&d)) {
                Ok(desired) => prop_assert_eq!(stored.map(|r| r.spec), Some(desired)),
                Err(_) => prop_assert_eq!(stored, None),
            }
            Ok(())
        })?;
    }
}

// Catches: a refusal over the in-memory store (the kube mock tests' store) not reaching the
// status patch, or reaching it without the document and path.
#[tokio::test]
async fn over_the_mock_api_a_refusal_patches_ready_false_schema_refused_with_the_message() {
    let (ctx, mut handle) = context();
    let d = finalized(DeletionPolicy::Retain);
    let first = reconcile::sync(&MediaDataStores, &ctx.store, &input(&d), at(1))
        .await
        .expect("create");
    let doc = ctx
        .store
        .put_media_document(NAME, shot_document())
        .expect("document");
    let refused = edited(&d, &first.status, fps_as_string);
    let mut sent = Value::Null;
    let server = async {
        let (_, body) = expect(
            &mut handle,
            "PATCH",
            &format!("{MDS}/status"),
            &serde_json::to_value(&refused).expect("json"),
        )
        .await;
        sent = body["status"].clone();
        expect(&mut handle, "POST", EVENTS, &json!({})).await;
    };
    let result = scripted(
        reconcile::reconcile::<MediaDataStores, _>(Arc::new(refused.clone()), ctx.clone()),
        server,
    )
    .await;
    assert_eq!(result.expect_err("refused").label(), "schema_refused");
    let conditions = sent["conditions"].as_array().expect("conditions");
    let ready = conditions.iter().find(|c| c["type"] == "Ready").expect("Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "SchemaRefused");
    assert_eq!(ready["observedGeneration"], 2);
    let message = ready["message"].as_str().expect("message");
    assert!(message.contains(&format!("stored document {doc}")), "{message}");
    assert!(message.contains("/fps"), "{message}");
    assert_eq!(sent["version"], 1);
    assert_eq!(sent["storeName"], NAME);
    assert_eq!(sent["observedGeneration"], 2);
}

// Catches: a schema change and a
// document write that overlap leaving a stored document that fails its DataStore's schema,
// which the operator's SchemaRefused promise ("every stored document passes the stored
// schema") relies on. The write is played in SQL as `put_media_document` makes it (the
// DataStore's schema read FOR SHARE, then the insert), held open while the change runs: the
// change's check of the stored documents runs before its own transaction, so it cannot see
// the document, and its update only waits for the share lock.
#[tokio::test]
async fn a_document_committed_during_a_schema_change_never_fails_the_new_schema() {
    drive_testkit::init_tracing();
    let pg = PgServer::shared();
    let db = pg.create_database().await.expect("create database");
    let url = pg.url(&db);
    let meta = PgMetaStore::connect(&MetaConfig::new(url.clone()))
        .await
        .expect("connect");
    let store = MetaStoreAdapter(meta.clone());
    let d = media_datastore("studio", "shots", DeletionPolicy::Retain);
    let first = reconcile::sync(&MediaDataStores, &store, &input(&d), at(1))
        .await
        .expect("create");
    let ds = meta.media_datastore(NAME).await.expect("read").expect("recorded");
    let refused = edited(&d, &first.status, fps_as_string);
    let refused = operator::plan::mediadatastore::desired_datastore(&input(&refused)).expect("valid");

    let (mut writer, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("writer connection");
    tokio::spawn(connection);
    let (watcher, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("watcher connection");
    tokio::spawn(connection);

    let media_id = json!({"asset": "sh020"});
    let write = writer
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::Serializable)
        .start()
        .await
        .expect("begin");
    let schema: Value = write
        .query_one(
            "SELECT schema FROM media_datastores WHERE id = $1 FOR SHARE",
            &[&ds.id],
        )
        .await
        .expect("read the schema")
        .get(0);
    assert_eq!(schema, shots_schema(), "the write checks against the old schema");
    write
        .execute(
            "INSERT INTO media_documents (id, datastore_id, media_key, media_id, body) VALUES ($1, $2, $3, $4, $5)",
            &[
                &uuid::Uuid::new_v4(),
                &ds.id,
                &drive::media::media_id_key(&media_id),
                &media_id,
                &shot_document(),
            ],
        )
        .await
        .expect("insert the document");

    let change = tokio::spawn(async move { store.put_media_datastore(&refused).await });
    // Until the change waits for the write's lock (poll with a deadline).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the change never waited for the write"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    write.commit().await.expect("commit the document");
    let changed = change.await.expect("join");

    // Whatever the outcome of the change, every stored document passes the stored schema.
    let now = meta.media_datastore(NAME).await.expect("read").expect("kept");
    let compiled = drive::media::CompiledDataStore::compile(now.spec.clone()).expect("compiles");
    let docs = meta
        .media_documents(NAME, &media_id, drive::meta::Versions::All)
        .await
        .expect("documents");
    assert_eq!(docs.len(), 1);
    for doc in docs {
        assert!(
            compiled.check_document(&doc.body).is_ok(),
            "document {} fails the stored schema (version {}) after the change returned {:?}",
            doc.id,
            now.spec.version,
            changed.map(|r| r.spec.version)
        );
    }
}

// Catches: a queryable path listed twice taken by the store (its field index keeps one row
// per document and field, so every document with the field would then be refused) or by the
// planner.
#[tokio::test]
async fn a_queryable_path_listed_twice_is_refused_by_the_store_and_the_planner() {
    let (meta, store) = store_on(PgServer::shared()).await;
    let d = media_datastore("studio", "shots", DeletionPolicy::Retain);
    let mut twice = operator::plan::mediadatastore::desired_datastore(&input(&d)).expect("valid");
    twice.queryable = vec!["fps".into(), "fps".into()];
    let refused = meta.put_media_datastore(&twice).await.unwrap_err();
    assert!(refused.to_string().contains("/queryable/1"), "{refused}");
    assert_eq!(meta.media_datastore(NAME).await.unwrap(), None, "nothing stored");
    let mut listed_twice = d.clone();
    listed_twice.spec.queryable = twice.queryable.clone();
    let p = reconcile::sync(&MediaDataStores, &store, &input(&listed_twice), at(1))
        .await
        .expect("planned");
    assert_eq!(ready(&p.status).1, "InvalidSpec");
    assert!(
        ready(&p.status).2.contains("spec.queryable[1]"),
        "{}",
        ready(&p.status).2
    );
}

// Catches: a MediaDataStore in a namespace called `studiodrive` claiming the store's built-in
// DataStore of the same store name (`studiodrive/technical`): rewriting its schema or access,
// or deleting it and its documents on deletion with `Delete`.
#[tokio::test]
async fn a_resource_in_the_studiodrive_namespace_never_touches_the_built_in_datastore() {
    let (meta, store) = store_on(PgServer::shared()).await;
    let mut builtin = media_datastore("studio", "shots", DeletionPolicy::Retain);
    let mut wanted = operator::plan::mediadatastore::desired_datastore(&input(&builtin)).expect("valid");
    wanted.name = "studiodrive/technical".into();
    meta.put_media_datastore(&wanted)
        .await
        .expect("the built-in DataStore");
    let doc = meta
        .put_media_document(
            "studiodrive/technical",
            &json!({"asset": "a"}),
            None,
            &shot_document(),
        )
        .await
        .expect("document");

    let mut claim = media_datastore("studiodrive", "technical", DeletionPolicy::Delete);
    fps_as_string(&mut claim);
    let p = reconcile::sync(&MediaDataStores, &store, &input(&claim), at(1))
        .await
        .expect("planned");
    assert_eq!(ready(&p.status).1, "InvalidSpec");
    assert!(
        reconcile::cleanup(&MediaDataStores, &store, &input(&claim))
            .await
            .expect("cleanup")
            .is_empty()
    );
    let kept = meta
        .media_datastore("studiodrive/technical")
        .await
        .expect("read")
        .expect("kept");
    assert_eq!(kept.spec.schema, shots_schema());
    assert!(meta.media_document(doc.id).await.expect("read").is_some());
    builtin.metadata.namespace = Some("studiodrive-system".into());
    assert_eq!(
        reconcile::sync(&MediaDataStores, &store, &input(&builtin), at(2))
            .await
            .expect("another namespace")
            .status
            .store_name
            .as_deref(),
        Some("studiodrive-system/shots")
    );
}
