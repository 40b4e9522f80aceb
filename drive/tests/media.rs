//! Media DataStores and Documents in a real PostgreSQL (issue 20): schema-on-write with the
//! JSON path of each error and nothing stored; immutable documents, latest and all versions;
//! schema changes that would orphan a stored document refused with the document named; and
//! DataStore queries against a model: random documents and random filter trees, where the
//! store's answer (from the field index) must equal the filter evaluated in memory.

mod common;

use std::collections::BTreeMap;

use drive::ErrorKind;
use drive::media::{CompiledDataStore, DataStoreSpec, Filter, RegionSpec, TimelineQuery, TimelineSpec};
use drive::meta::{MediaDocument, Versions};
use proptest::prelude::*;
use proptest::strategy::ValueTree as _;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

fn renders() -> DataStoreSpec {
    DataStoreSpec {
        name: "studio/renders".into(),
        analysis_type: "render-stats".into(),
        version: 1,
        schema: json!({
            "type": "object",
            "required": ["frames"],
            "properties": {
                "frames": {"type": "integer", "minimum": 0},
                "codec": {"type": "string"},
                "ok": {"type": ["boolean", "null"]},
                "res": {"type": "object", "properties": {"w": {"type": "number"}, "h": {"type": "number"}}},
                "tags": {"type": "array", "items": {"type": "string"}}
            }
        }),
        media_id_schema: json!({"type": "object", "required": ["asset"], "properties": {"asset": {"type": "string"}}}),
        queryable: vec![
            "frames".into(),
            "codec".into(),
            "ok".into(),
            "res.w".into(),
            "res".into(),
            "tags.0".into(),
        ],
        timeline: Vec::new(),
        access: Default::default(),
    }
}

/// A new empty file `name` at the root of `ws`.
async fn new_file(
    store: &drive::PgMetaStore,
    ws: &drive::model::Workspace,
    name: &str,
) -> drive::model::NodeId {
    use drive::model::{NewNode, NodeKind};
    store
        .create(
            &common::actor(),
            ws.id,
            ws.root,
            &common::name(name),
            &NewNode::new(NodeKind::File, 0o644),
        )
        .await
        .unwrap()
        .ino
}

/// Removes `name` from the root of `ws` and purges it now (trash and node).
async fn remove_and_purge(store: &drive::PgMetaStore, ws: &drive::model::Workspace, name: &str) {
    use drive::rules::gc::RetentionClass;
    store
        .unlink(&common::actor(), ws.id, ws.root, &common::name(name))
        .await
        .unwrap();
    store
        .purge_trash(
            ws.id,
            ws.root,
            ws.kind,
            &[RetentionClass::days(0)],
            store.gc_now().await.unwrap(),
            std::time::SystemTime::now() + std::time::Duration::from_secs(60),
            false,
            drive::meta::PurgePace::FULL_SPEED,
        )
        .await
        .unwrap();
    store
        .purge_queued_nodes(drive::meta::PurgePace::FULL_SPEED)
        .await
        .unwrap();
}

// Catches: invalid documents stored (or stored in part), errors without the place they are
// at, a second write of a media id replacing the first, "latest" that is not the newest, a
// schema change that strands a stored document, a media id schema that changes.
#[tokio::test]
async fn documents_are_checked_on_write_immutable_and_schema_changes_keep_them_valid() {
    let store = common::store().await;
    store.put_media_datastore(&renders()).await.unwrap();
    let asset = json!({"asset": "sh010_comp"});

    for (doc, path) in [
        (json!({"codec": "exr"}), "its root"),
        (json!({"frames": -1}), "/frames"),
        (json!({"frames": 3, "res": {"w": "wide"}}), "/res/w"),
        (json!({"frames": 3, "tags": ["a", 7]}), "/tags/1"),
    ] {
        let err = store
            .put_media_document("studio/renders", &asset, None, &doc)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.to_string().contains(path), "{doc}: {err}");
    }
    let err = store
        .put_media_document(
            "studio/renders",
            &json!({"asset": 1}),
            None,
            &json!({"frames": 1}),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("media id is invalid at /asset"), "{err}");
    assert!(
        store
            .media_documents("studio/renders", &asset, Versions::All)
            .await
            .unwrap()
            .is_empty()
    );

    let first = store
        .put_media_document(
            "studio/renders",
            &asset,
            None,
            &json!({"frames": 240, "codec": "exr"}),
        )
        .await
        .unwrap();
    let second = store
        .put_media_document(
            "studio/renders",
            &asset,
            None,
            &json!({"frames": 241, "codec": "exr"}),
        )
        .await
        .unwrap();
    assert_ne!(first.id, second.id);
    let all = store
        .media_documents("studio/renders", &asset, Versions::All)
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|d| d.id).collect::<Vec<_>>(),
        [first.id, second.id]
    );
    let latest = store
        .media_documents("studio/renders", &asset, Versions::Latest)
        .await
        .unwrap();
    assert_eq!(latest.iter().map(|d| d.id).collect::<Vec<_>>(), [second.id]);
    assert_eq!(
        store.media_document(first.id).await.unwrap().unwrap().body["frames"],
        240
    );

    // A schema that the first document fails: refused, naming it; nothing changes.
    let mut stricter = renders();
    stricter.schema["properties"]["frames"]["minimum"] = json!(241);
    let err = store.put_media_datastore(&stricter).await.unwrap_err();
    assert!(err.to_string().contains(&first.id.to_string()), "{err}");
    assert!(err.to_string().contains("/frames"), "{err}");
    assert_eq!(
        store
            .media_datastore("studio/renders")
            .await
            .unwrap()
            .unwrap()
            .spec,
        renders()
    );
    // One every document passes is taken; the media id schema never changes.
    let mut looser = renders();
    looser.schema["properties"]["frames"]["minimum"] = json!(1);
    looser.version = 2;
    assert_eq!(store.put_media_datastore(&looser).await.unwrap().spec.version, 2);
    let mut other_ids = looser.clone();
    other_ids.media_id_schema = json!({"type": "string"});
    assert!(
        store
            .put_media_datastore(&other_ids)
            .await
            .unwrap_err()
            .to_string()
            .contains("media id schema")
    );
}

/// A random document of the `renders` schema, small value ranges so filters hit.
fn document() -> impl Strategy<Value = Value> {
    (
        0u32..6,
        prop::option::of(prop::sample::select(vec!["exr", "dpx", "mov", "Mov", "é"])),
        prop::option::of(prop::option::of(any::<bool>())),
        prop::option::of(prop::option::of(prop::sample::select(vec![
            1920.0, 3840.0, 2048.5,
        ]))),
        prop::option::of(prop::collection::vec(
            prop::sample::select(vec!["a", "b", "c"]),
            0..3,
        )),
    )
        .prop_map(|(frames, codec, ok, w, tags)| {
            let mut doc = json!({"frames": frames});
            if let Some(c) = codec {
                doc["codec"] = json!(c);
            }
            if let Some(ok) = ok {
                doc["ok"] = json!(ok);
            }
            if let Some(w) = w {
                doc["res"] = match w {
                    Some(w) => json!({"w": w, "h": 1080}),
                    None => json!({"h": 1080}),
                };
            }
            if let Some(tags) = tags {
                doc["tags"] = json!(tags);
            }
            doc
        })
}

fn leaf() -> impl Strategy<Value = Value> {
    let field = prop::sample::select(vec!["frames", "codec", "ok", "res.w", "res", "tags.0"]);
    let value = prop_oneof![
        (0i32..7).prop_map(|n| json!(n)),
        prop::sample::select(vec![1920.0, 3840.0, 2048.5, 2000.0]).prop_map(|n| json!(n)),
        prop::sample::select(vec!["exr", "dpx", "mov", "M", "a", "b", "é", ""]).prop_map(|s| json!(s)),
        any::<bool>().prop_map(|b| json!(b)),
        Just(Value::Null),
    ];
    (
        field,
        prop::sample::select(vec!["=", "<", ">", "<=", ">=", "in", "exists"]),
        value,
        prop::collection::vec(
            prop_oneof![
                (0i32..7).prop_map(|n| json!(n)),
                prop::sample::select(vec!["exr", "a", "b"]).prop_map(|s| json!(s)),
                Just(Value::Null)
            ],
            0..3,
        ),
    )
        .prop_map(|(field, op, value, list)| match op {
            "exists" => json!({"field": field, "op": "exists"}),
            "in" => json!({"field": field, "op": "in", "value": list}),
            // Only numbers and strings are ordered.
            op if op != "=" && (value.is_boolean() || value.is_null()) => {
                json!({"field": field, "op": op, "value": 3})
            }
            op => json!({"field": field, "op": op, "value": value}),
        })
}

fn filter() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|fs| json!({"and": fs})),
            prop::collection::vec(inner.clone(), 0..4).prop_map(|fs| json!({"or": fs})),
            inner.prop_map(|f| json!({"not": f})),
        ]
    })
}

// Catches: SQL whose meaning drifts from the filter's (NULLs under NOT, type confusion between
// numbers and strings, collation instead of byte order, a missing field counted as null, an
// empty and/or, a nested path read wrongly), and "latest" that is not the newest version.
#[test]
fn queries_answer_what_the_model_answers() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = rt.block_on(common::store());
    rt.block_on(store.put_media_datastore(&renders())).unwrap();
    // 120 documents over 40 media ids (so several versions of most).
    let docs: Vec<Value> = {
        let mut runner = TestRunner::new(Config::default());
        let strategy = prop::collection::vec(document(), 120);
        strategy.new_tree(&mut runner).unwrap().current()
    };
    let mut written: Vec<MediaDocument> = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let media_id = json!({"asset": format!("a{}", i % 40)});
        written.push(
            rt.block_on(store.put_media_document("studio/renders", &media_id, None, doc))
                .unwrap(),
        );
    }
    let mut newest: BTreeMap<String, &MediaDocument> = BTreeMap::new();
    for d in &written {
        let key = d.media_id.to_string();
        if newest
            .get(&key)
            .is_none_or(|n| (n.created_at, n.id) < (d.created_at, d.id))
        {
            newest.insert(key, d);
        }
    }

    let mut runner = TestRunner::new(Config {
        cases: 200,
        ..Config::default()
    });
    runner
        .run(&filter(), |json_filter| {
            let f = Filter::from_json(&json_filter).expect("generated filters parse");
            for versions in [Versions::All, Versions::Latest] {
                let mut want: Vec<_> = written
                    .iter()
                    .filter(|d| versions == Versions::All || newest[&d.media_id.to_string()].id == d.id)
                    .filter(|d| f.matches(&d.body))
                    .map(|d| d.id)
                    .collect();
                want.sort();
                let mut got: Vec<_> = rt
                    .block_on(store.query_media("studio/renders", &f, versions, 10_000))
                    .expect("query")
                    .into_iter()
                    .map(|h| h.id)
                    .collect();
                got.sort();
                prop_assert_eq!(&got, &want, "filter {} ({:?})", json_filter, versions);
            }
            Ok(())
        })
        .unwrap();

    // A filter on a field the DataStore does not index is refused, saying which.
    let f = Filter::from_json(&json!({"field": "res.h", "op": "=", "value": 1080})).unwrap();
    let err = rt
        .block_on(store.query_media("studio/renders", &f, Versions::All, 10))
        .unwrap_err();
    assert!(err.to_string().contains("res.h is not queryable"), "{err}");
}

// Catches: documents left behind (with their index rows) when their file is purged, and a
// media id whose newest document was purged answering "latest" with nothing although an
// older version remains.
#[tokio::test]
async fn a_purged_file_takes_its_documents_and_latest_falls_back() {
    use drive::model::WorkspaceKind;
    let store = common::store().await;
    store.put_media_datastore(&renders()).await.unwrap();
    let ws = common::workspace(&store, "media", WorkspaceKind::Team).await;
    let file = new_file(&store, &ws, "f.exr").await;
    let asset = json!({"asset": "plate"});
    let kept = store
        .put_media_document("studio/renders", &asset, None, &json!({"frames": 1}))
        .await
        .unwrap();
    let on_file: Vec<_> = [2, 3]
        .into_iter()
        .map(|frames| json!({"frames": frames}))
        .collect();
    let mut attached = Vec::new();
    for body in &on_file {
        attached.push(
            store
                .put_media_document("studio/renders", &asset, Some((ws.id, file)), body)
                .await
                .unwrap(),
        );
    }
    assert_eq!(attached[0].target, Some((ws.id, file)));
    let latest = store
        .media_documents("studio/renders", &asset, Versions::Latest)
        .await
        .unwrap();
    assert_eq!(latest[0].id, attached[1].id);
    // A node of another workspace, or none, cannot be a target.
    let other = common::workspace(&store, "other", WorkspaceKind::Team).await;
    let err = store
        .put_media_document(
            "studio/renders",
            &asset,
            Some((other.id, file)),
            &json!({"frames": 9}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);

    remove_and_purge(&store, &ws, "f.exr").await;
    for d in &attached {
        assert_eq!(store.media_document(d.id).await.unwrap(), None);
    }
    let latest = store
        .media_documents("studio/renders", &asset, Versions::Latest)
        .await
        .unwrap();
    assert_eq!(latest.iter().map(|d| d.id).collect::<Vec<_>>(), [kept.id]);
    let f = Filter::from_json(&json!({"field": "frames", "op": ">=", "value": 0})).unwrap();
    let hits = store
        .query_media("studio/renders", &f, Versions::All, 100)
        .await
        .unwrap();
    assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), [kept.id]);
}

fn analysis() -> DataStoreSpec {
    DataStoreSpec {
        name: "studio/analysis".into(),
        analysis_type: "faces-and-shots".into(),
        version: 1,
        schema: json!({"type": "object"}),
        media_id_schema: json!({"type": "string"}),
        queryable: Vec::new(),
        timeline: vec![
            TimelineSpec {
                path: "shots".into(),
                start: "in".into(),
                end: Some("out".into()),
                region: None,
            },
            TimelineSpec {
                path: "detections.faces".into(),
                start: "t".into(),
                end: None,
                region: Some(RegionSpec {
                    x: "box.x".into(),
                    y: "box.y".into(),
                    width: "box.w".into(),
                    height: "box.h".into(),
                }),
            },
        ],
        access: Default::default(),
    }
}

// Catches: overlap tests off by an edge (touching ranges and boxes count), entities without a
// box matching an area, items read back from the wrong collection or index, entities of
// another document, and timeline rows left after a purge of the DataStore's documents.
#[test]
fn timeline_queries_inside_a_document_answer_what_the_model_answers() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = rt.block_on(common::store());
    rt.block_on(store.put_media_datastore(&analysis())).unwrap();
    let compiled = CompiledDataStore::compile(analysis()).unwrap();
    let doc = |seed: u64| {
        use rand::{Rng as _, SeedableRng as _};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let shots: Vec<Value> = (0..300)
            .map(|_| {
                let a = rng.random_range(0..1000);
                json!({"in": a, "out": a + rng.random_range(0..40)})
            })
            .collect();
        let faces: Vec<Value> = (0..300)
            .map(|i| {
                let mut face = json!({"t": rng.random_range(0..1000), "id": i});
                if i % 7 != 0 {
                    face["box"] = json!({"x": rng.random_range(0..100), "y": rng.random_range(0..100),
                                         "w": rng.random_range(0..20), "h": rng.random_range(0..20)});
                }
                face
            })
            .collect();
        json!({"shots": shots, "detections": {"faces": faces}})
    };
    let body = doc(1);
    let written = rt
        .block_on(store.put_media_document("studio/analysis", &json!("reel1"), None, &body))
        .unwrap();
    // Another document's entities must never show up.
    rt.block_on(store.put_media_document("studio/analysis", &json!("reel2"), None, &doc(2)))
        .unwrap();
    let entities = compiled.timeline(&body).unwrap();
    assert_eq!(entities.len(), 600);

    let query = (
        prop::option::of((0i32..1100, 0i32..200).prop_map(|(a, len)| (f64::from(a), f64::from(a + len)))),
        prop::option::of(
            (0i32..110, 0i32..110, 0i32..40, 0i32..40)
                .prop_map(|(x, y, w, h)| [f64::from(x), f64::from(y), f64::from(x + w), f64::from(y + h)]),
        ),
    );
    let mut runner = TestRunner::new(Config {
        cases: 100,
        ..Config::default()
    });
    runner
        .run(&query, |(time, area)| {
            let q = TimelineQuery { time, area };
            let want: Vec<(String, usize)> = entities
                .iter()
                .filter(|e| e.matches(&q))
                .map(|e| (analysis().timeline[e.collection].path.clone(), e.index))
                .collect();
            let hits = rt
                .block_on(store.query_media_timeline(written.id, &q, 10_000))
                .unwrap();
            let mut got: Vec<(String, usize)> =
                hits.iter().map(|h| (h.collection.clone(), h.index)).collect();
            let mut want = want;
            want.sort();
            got.sort();
            prop_assert_eq!(&got, &want, "{:?}", q);
            for h in &hits {
                let items = if h.collection == "shots" {
                    &body["shots"]
                } else {
                    &body["detections"]["faces"]
                };
                prop_assert_eq!(&h.item, &items[h.index]);
            }
            Ok(())
        })
        .unwrap();
    let bad = TimelineQuery {
        time: Some((5.0, 1.0)),
        area: None,
    };
    assert!(
        rt.block_on(store.query_media_timeline(written.id, &bad, 10))
            .is_err()
    );
}

// Catches: a bulk load that stores what put_media_document would refuse (or part of a refused
// batch), index rows, timeline entities or "latest" pointers that differ from a put's, and a
// batch's older version of a media id taking "latest" from its newer one.
#[tokio::test]
async fn bulk_loaded_documents_are_checked_and_indexed_as_put_documents_are() {
    let store = common::store().await;
    store.put_media_datastore(&renders()).await.unwrap();
    store.put_media_datastore(&analysis()).await.unwrap();
    let asset = |i: u32| json!({"asset": format!("a{i}")});
    let put = store
        .put_media_document("studio/renders", &asset(5), None, &json!({"frames": 1}))
        .await
        .unwrap();

    // A batch with an invalid document stores nothing and names the document and the place.
    let batch: Vec<(Value, Value)> = (0..4)
        .map(|i| (asset(i), json!({"frames": if i == 2 { -1 } else { i as i64 }})))
        .collect();
    let err = store
        .bulk_load_media_documents("studio/renders", &batch)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(
        err.to_string().contains("document 2 of the batch") && err.to_string().contains("/frames"),
        "{err}"
    );
    let all = Filter::from_json(&json!({"field": "frames", "op": "exists"})).unwrap();
    assert_eq!(
        store
            .query_media("studio/renders", &all, Versions::All, 100)
            .await
            .unwrap()
            .len(),
        1
    );

    // Ten assets, a3 twice (the later one is its latest), a5 once more after its put.
    let mut batch: Vec<(Value, Value)> = (0..10)
        .map(|i| {
            (
                asset(i),
                json!({"frames": 10 * i, "codec": if i % 2 == 0 { "exr" } else { "dpx" }}),
            )
        })
        .collect();
    batch.push((
        asset(3),
        json!({"frames": 31, "codec": "exr", "res": {"w": 1920}}),
    ));
    let mut ids = store
        .bulk_load_media_documents("studio/renders", &batch)
        .await
        .unwrap();
    assert_eq!(ids.len(), 11);
    ids.push(put.id); // 11: a5's first version, now not its latest
    let latest = store
        .media_documents("studio/renders", &asset(3), Versions::Latest)
        .await
        .unwrap();
    assert_eq!((latest.len(), latest[0].id), (1, ids[10]));
    let versions = store
        .media_documents("studio/renders", &asset(5), Versions::All)
        .await
        .unwrap();
    assert_eq!(
        versions.iter().map(|d| d.id).collect::<Vec<_>>(),
        [ids[11], ids[5]]
    );
    for (f, versions, want) in [
        (
            json!({"field": "codec", "op": "=", "value": "exr"}),
            Versions::Latest,
            vec![0, 2, 4, 6, 8, 10],
        ),
        (
            json!({"field": "codec", "op": "=", "value": "exr"}),
            Versions::All,
            vec![0, 2, 4, 6, 8, 10],
        ),
        (
            json!({"field": "frames", "op": "<", "value": 35}),
            Versions::Latest,
            vec![0, 1, 2, 10],
        ),
        (
            json!({"field": "frames", "op": "<", "value": 35}),
            Versions::All,
            vec![0, 1, 2, 3, 10, 11],
        ),
        (
            json!({"field": "res.w", "op": ">=", "value": 1920}),
            Versions::All,
            vec![10],
        ),
    ] {
        let filter = Filter::from_json(&f).unwrap();
        let mut got: Vec<uuid::Uuid> = store
            .query_media("studio/renders", &filter, versions, 100)
            .await
            .unwrap()
            .iter()
            .map(|h| h.id)
            .collect();
        let mut want: Vec<uuid::Uuid> = want.into_iter().map(|i| ids[i]).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{f} {versions:?}");
    }

    // Timeline entities are indexed as a put indexes them.
    let body = json!({
        "shots": [{"in": 0, "out": 10}, {"in": 20, "out": 30}, {"in": 25}],
        "detections": {"faces": [{"t": 22, "box": {"x": 5, "y": 5, "w": 2, "h": 2}}, {"t": 50}]}
    });
    let ids = store
        .bulk_load_media_documents("studio/analysis", &[(json!("reel9"), body.clone())])
        .await
        .unwrap();
    let q = TimelineQuery {
        time: Some((21.0, 24.0)),
        area: None,
    };
    let hits = store.query_media_timeline(ids[0], &q, 100).await.unwrap();
    assert_eq!(
        hits.iter()
            .map(|h| (h.collection.as_str(), h.index, h.item.clone()))
            .collect::<Vec<_>>(),
        [
            ("shots", 1, body["shots"][1].clone()),
            ("detections.faces", 0, body["detections"]["faces"][0].clone())
        ]
    );
}

/// An analysis of `shots` shots (each with a note to make it weigh) and 300 faces.
fn large_analysis(shots: usize) -> Value {
    use rand::{Rng as _, SeedableRng as _};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let shots: Vec<Value> = (0..shots)
        .map(|i| {
            let a = rng.random_range(0..100_000);
            json!({"in": a, "out": a + rng.random_range(0..400), "note": format!("shot {i} \"é\" {}", "x".repeat(400))})
        })
        .collect();
    let faces: Vec<Value> = (0..300)
        .map(|i| {
            json!({"t": rng.random_range(0..100_000), "id": i,
                   "box": {"x": rng.random_range(0..100), "y": rng.random_range(0..100), "w": 10, "h": 10}})
        })
        .collect();
    json!({"shots": shots, "detections": {"faces": faces}})
}

/// `docs`' timeline hits for `q` against the model (`compiled`'s entities of `body`): the
/// same entities, each with its own item.
async fn assert_timeline_matches_the_model(
    docs: &drive::media::documents::DocumentStore,
    compiled: &CompiledDataStore,
    id: uuid::Uuid,
    body: &Value,
    q: TimelineQuery,
) {
    let want: Vec<(String, usize)> = compiled
        .timeline(body)
        .unwrap()
        .iter()
        .filter(|e| e.matches(&q))
        .map(|e| (compiled.spec.timeline[e.collection].path.clone(), e.index))
        .collect();
    let hits = docs.timeline(id, &q, 10_000).await.unwrap();
    let mut got: Vec<(String, usize)> = hits.iter().map(|h| (h.collection.clone(), h.index)).collect();
    let mut want = want;
    want.sort();
    got.sort();
    assert_eq!(got, want, "{q:?}");
    for h in &hits {
        let items = drive::media::FieldPath::parse(&h.collection).unwrap();
        let items = items.value(body).unwrap();
        assert_eq!(h.item, items[h.index], "{q:?}: {} {}", h.collection, h.index);
    }
}

// Catches: a large document kept whole in PostgreSQL or refused when an object store is there
// (or stored in part when none is), its text not read back exactly, timeline items read from
// the wrong bytes (across block boundaries too), a re-index after a timeline change that loses
// the items' places, a schema change that skips a stored document, a GC pass that deletes the
// blocks of a live document, and blocks left referenced after the document's file is purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_document_keeps_its_text_in_blocks_that_live_as_long_as_it_does() {
    use std::sync::Arc;
    use std::time::Duration;

    use drive::data::{ChunkStore, LocalChunkStore};
    use drive::gc::{BlockPassOptions, run_block_pass};
    use drive::media::documents::{BODY_BLOCK_SIZE, DocumentStore};
    use drive::model::WorkspaceKind;

    let (meta, url) = common::store_and_url().await;
    let raw = common::raw_client(&url).await;
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ChunkStore> = Arc::new(LocalChunkStore::open(dir.path()).unwrap());
    let docs = DocumentStore::new(meta.clone(), Some(store.clone()));
    docs.put_datastore(&analysis()).await.unwrap();
    let compiled = CompiledDataStore::compile(analysis()).unwrap();
    let ws = common::workspace(&meta, "media", WorkspaceKind::Team).await;
    let file = new_file(&meta, &ws, "reel1.mov").await;
    let body = large_analysis(20_000);
    let text_len = serde_json::to_vec(&body).unwrap().len();
    let blocks = text_len.div_ceil(BODY_BLOCK_SIZE);
    assert!(blocks >= 3, "{text_len} bytes");

    // Without an object store it is refused, and nothing is stored.
    let err = DocumentStore::new(meta.clone(), None)
        .put("studio/analysis", &json!("reel1"), Some((ws.id, file)), &body)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("object store"), "{err}");
    let count = |sql: &'static str| {
        let raw = &raw;
        async move { raw.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(count("SELECT count(*) FROM media_documents").await, 0);

    let written = docs
        .put("studio/analysis", &json!("reel1"), Some((ws.id, file)), &body)
        .await
        .unwrap();
    assert_eq!(written.stored_size, Some(text_len as u64));
    let row = raw
        .query_one(
            "SELECT body IS NULL, body_size FROM media_documents WHERE id = $1",
            &[&written.id],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, bool>(0), row.get::<_, i64>(1)),
        (true, text_len as i64)
    );
    assert_eq!(count("SELECT count(*) FROM media_blocks").await, blocks as i64);
    assert_eq!(store.list("blocks/").await.unwrap().len(), blocks);
    // The metadata store's own read has no body; the document store's reads it whole.
    assert_eq!(
        meta.media_document(written.id).await.unwrap().unwrap().body,
        Value::Null
    );
    assert_eq!(docs.get(written.id).await.unwrap().unwrap().body, body);

    use rand::{Rng as _, SeedableRng as _};
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for _ in 0..40 {
        let a = f64::from(rng.random_range(0..101_000));
        let q = TimelineQuery {
            time: Some((a, a + f64::from(rng.random_range(0..300)))),
            area: rng.random_bool(0.3).then_some([0.0, 0.0, 50.0, 50.0]),
        };
        assert_timeline_matches_the_model(&docs, &compiled, written.id, &body, q).await;
    }

    // A schema change reads the stored text: refused without it, refused when the text
    // fails the new schema (naming the document), taken when it passes.
    let mut strict = analysis();
    strict.schema = json!({"type": "object", "properties": {"shots": {"maxItems": 10}}});
    let err = meta.put_media_datastore(&strict).await.unwrap_err();
    assert!(err.to_string().contains("object store"), "{err}");
    let err = docs.put_datastore(&strict).await.unwrap_err();
    assert!(err.to_string().contains(&written.id.to_string()), "{err}");
    // A timeline change re-indexes the stored document: faces are now collection 0.
    let mut faces_only = analysis();
    faces_only.schema = json!({"type": "object", "required": ["shots"]});
    faces_only.timeline.remove(0);
    docs.put_datastore(&faces_only).await.unwrap();
    let compiled = CompiledDataStore::compile(faces_only).unwrap();
    for a in [0.0, 25_000.0, 50_000.0, 99_000.0] {
        let q = TimelineQuery {
            time: Some((a, a + 3_000.0)),
            area: None,
        };
        assert_timeline_matches_the_model(&docs, &compiled, written.id, &body, q).await;
    }

    // GC keeps the blocks of a live document, however old.
    raw.execute("UPDATE blocks SET updated_at = now() - INTERVAL '2 hours'", &[])
        .await
        .unwrap();
    let pass = |id: &str| {
        let mut o = BlockPassOptions::new(id);
        o.grace = Duration::from_secs(3600);
        o.deletes_per_second = 100_000;
        o
    };
    let kept = run_block_pass(&meta, store.as_ref(), &pass("live"))
        .await
        .unwrap();
    assert_eq!(kept.deleted, 0, "{kept:?}");
    let fresh = DocumentStore::new(meta.clone(), Some(store.clone()));
    assert_eq!(fresh.get(written.id).await.unwrap().unwrap().body, body);

    // Purging the file takes the document; its blocks are then GC's.
    remove_and_purge(&meta, &ws, "reel1.mov").await;
    assert_eq!(fresh.get(written.id).await.unwrap(), None);
    assert_eq!(count("SELECT count(*) FROM media_blocks").await, 0);
    let swept = run_block_pass(&meta, store.as_ref(), &pass("purged"))
        .await
        .unwrap();
    assert_eq!(swept.deleted, blocks as u64, "{swept:?}");
    assert_eq!(store.list("blocks/").await.unwrap().len(), 0);
}

// Catches: a store made by version 1 of the technical DataStore (file media ids only) that
// refuses the summaries of version 2, or that loses or strands its stored documents in the
// upgrade; a widening that is no widening (it would strand stored ids).
#[tokio::test]
async fn a_version_1_technical_datastore_is_widened_to_take_sequence_summaries() {
    use drive::media::technical;

    let store = common::store().await;
    let current = technical::technical_datastore();
    let version_1 = DataStoreSpec {
        version: 1,
        media_id_schema: technical::file_media_id_schema(),
        ..current.clone()
    };
    store.put_media_datastore(&version_1).await.unwrap();
    let file_id = json!({"workspace": "vfx", "node": 42});
    let file_doc = json!({"kind": "file", "format": "openexr", "width": 64});
    store
        .put_media_document(&current.name, &file_id, None, &file_doc)
        .await
        .unwrap();
    let sequence_id = json!({"workspace": "vfx", "folder": 7, "sequence": "sh010.%04d.exr"});
    let summary = technical::summarize_frame_documents(&[(1, Some(file_doc.clone())), (3, None)]);
    let refused = store
        .put_media_document(&current.name, &sequence_id, None, &summary)
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::InvalidArgument, "{refused}");
    assert_eq!(
        store.put_media_datastore(&current).await.unwrap_err().kind(),
        ErrorKind::InvalidArgument,
        "a media id schema does not change by a put"
    );

    let not_wider = DataStoreSpec {
        media_id_schema: technical::sequence_media_id_schema(),
        ..current.clone()
    };
    let err = store
        .widen_media_id_schema(&not_wider, &technical::file_media_id_schema())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(
        store
            .widen_media_id_schema(&current, &technical::file_media_id_schema())
            .await
            .unwrap()
    );
    assert!(
        !store
            .widen_media_id_schema(&current, &technical::file_media_id_schema())
            .await
            .unwrap(),
        "widened once"
    );
    let record = store.put_media_datastore(&current).await.unwrap();
    assert_eq!(record.spec, current);

    store
        .put_media_document(&current.name, &sequence_id, None, &summary)
        .await
        .unwrap();
    let kept = store
        .media_documents(&current.name, &file_id, Versions::All)
        .await
        .unwrap();
    assert_eq!(kept.iter().map(|d| &d.body).collect::<Vec<_>>(), [&file_doc]);
}

/// A block path whose fetches wait on a timer that never fires, saying when one starts.
struct StalledFetches(tokio::sync::mpsc::UnboundedSender<()>);

impl drive::fs::BlockIo for StalledFetches {
    async fn put_block(&self, _data: bytes::Bytes) -> Result<[u8; 32], drive::fs::BlockIoError> {
        Err(refused())
    }

    async fn get_block(&self, _hash: [u8; 32], _len: u64) -> Result<bytes::Bytes, drive::fs::BlockIoError> {
        let _ = self.0.send(());
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        Err(refused())
    }

    async fn renew_blocks(&self, _hashes: &[[u8; 32]]) -> Result<Vec<[u8; 32]>, drive::fs::BlockIoError> {
        Err(refused())
    }

    async fn get_block_range(
        &self,
        hash: [u8; 32],
        len: u64,
        _range: std::ops::Range<u64>,
    ) -> Result<bytes::Bytes, drive::fs::BlockIoError> {
        self.get_block(hash, len).await
    }
}

fn refused() -> drive::fs::BlockIoError {
    drive::fs::BlockIoError::new(drive::fs::BlockErrorKind::Refused, "not in this test", "stalled")
}

/// A mount that stops while its extractor reads a header: the runtime drops the fetch, and
/// nothing polls its timer after the timer driver stopped (which panicked in a blocking
/// thread at every such unmount).
#[test]
fn an_extraction_in_flight_when_the_mount_stops_ends_without_a_panic() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use drive::model::WorkspaceKind;

    let panics = Arc::new(AtomicUsize::new(0));
    let counted = panics.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        counted.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = common::store().await;
        let ws = common::workspace(&store, "media", WorkspaceKind::Team).await;
        let ino = new_file(&store, &ws, "sh010.1001.exr").await;
        let (hash, len) = ([9; 32], 64 << 10);
        store.register_block(&hash, len, len).await.unwrap();
        let change = drive::meta::BlockChange {
            idx: 0,
            block: Some((hash, len)),
        };
        let now = drive::ports::Clock::now(&drive::ports::SystemClock);
        store
            .commit_content(&common::actor(), ws.id, ino, 0, &[change], len, now)
            .await
            .unwrap();
        let (started, mut fetching) = tokio::sync::mpsc::unbounded_channel();
        let extractor = drive::media::extract::TechnicalExtractor::start(
            store.clone(),
            Arc::new(StalledFetches(started)),
            &ws,
        )
        .await
        .unwrap();
        tokio::spawn(async move { extractor.extract(ino, len, Some("sh010.1001.exr".into())).await });
        fetching
            .recv()
            .await
            .expect("the extractor fetches the file's first block");
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(30));
    assert_eq!(
        panics.load(Ordering::SeqCst),
        0,
        "a thread panicked as the runtime stopped"
    );
}
