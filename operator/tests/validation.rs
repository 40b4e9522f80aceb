//! Validation without a cluster: every sample is accepted by its schema and CEL rules, and a
//! corpus of malformed specs and forbidden edits is rejected by one or the other.

use std::path::PathBuf;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use operator::crd::{
    self, EventSink, LifecyclePolicy, MediaDataStore, Preload, Share, Snapshot, Workspace, schema_check,
};
use serde_json::{Value, json};

fn sample(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../config/samples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn crd_for(kind: &str) -> CustomResourceDefinition {
    crd::all()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD of kind {kind}"))
}

fn problems(value: &Value, old: Option<&Value>) -> Vec<String> {
    let kind = value["kind"].as_str().expect("object has a kind");
    schema_check::validate_resource(&crd_for(kind), value, old)
}

#[test]
fn every_custom_resource_sample_parses_and_validates() {
    let files = [
        "workspace.yaml",
        "snapshot.yaml",
        "share.yaml",
        "lifecyclepolicy.yaml",
        "eventsink.yaml",
        "preload.yaml",
        "mediadatastore.yaml",
    ];
    for file in files {
        let text = sample(file);
        let value: Value = serde_saphyr::from_str(&text).expect("sample is YAML");
        let found = problems(&value, None);
        assert!(found.is_empty(), "{file}: {found:#?}");
        // The typed view must accept it too, and the kind must match the file.
        match value["kind"].as_str() {
            Some("Workspace") => drop(serde_json::from_value::<Workspace>(value).expect("Workspace")),
            Some("Snapshot") => drop(serde_json::from_value::<Snapshot>(value).expect("Snapshot")),
            Some("Share") => drop(serde_json::from_value::<Share>(value).expect("Share")),
            Some("EventSink") => drop(serde_json::from_value::<EventSink>(value).expect("EventSink")),
            Some("Preload") => drop(serde_json::from_value::<Preload>(value).expect("Preload")),
            Some("MediaDataStore") => {
                drop(serde_json::from_value::<MediaDataStore>(value).expect("MediaDataStore"))
            }
            Some("LifecyclePolicy") => {
                drop(serde_json::from_value::<LifecyclePolicy>(value).expect("LifecyclePolicy"))
            }
            other => panic!("{file}: unexpected kind {other:?}"),
        }
    }
}

#[test]
fn storage_samples_parse_into_kubernetes_types_and_agree_on_names() {
    use k8s_openapi::api::{batch::v1::Job, core::v1::PersistentVolumeClaim, storage::v1::StorageClass};
    let sc: StorageClass = serde_saphyr::from_str(&sample("storageclass.yaml")).expect("StorageClass");
    let pvc: PersistentVolumeClaim = serde_saphyr::from_str(&sample("pvc.yaml")).expect("PVC");
    let job: Job = serde_saphyr::from_str(&sample("render-job.yaml")).expect("Job");
    let ws: Workspace = serde_saphyr::from_str(&sample("workspace.yaml")).expect("Workspace");
    let store_name = format!(
        "{}.{}",
        ws.metadata.namespace.as_deref().unwrap_or_default(),
        ws.metadata.name.as_deref().unwrap_or_default()
    );
    let params = sc.parameters.expect("StorageClass parameters");
    assert_eq!(params.get("workspace"), Some(&store_name));
    assert_eq!(pvc.spec.and_then(|s| s.storage_class_name), sc.metadata.name);
    let pod = job.spec.expect("job spec").template.spec.expect("pod spec");
    let inline = pod
        .volumes
        .unwrap_or_default()
        .into_iter()
        .find_map(|v| v.csi)
        .expect("an inline CSI volume");
    assert_eq!(inline.driver, sc.provisioner);
    assert_eq!(
        inline.volume_attributes.and_then(|a| a.get("workspace").cloned()),
        Some(store_name)
    );
}

// Catches: a sample the schema accepts but the planner refuses (a manifest line the engine's
// parser rejects, a selector that does not parse), which would sit at InvalidSpec.
#[test]
fn the_preload_sample_passes_the_planners_checks() {
    use operator::plan::preload::{Input, validate};
    let warm: Preload = serde_saphyr::from_str(&sample("preload.yaml")).expect("Preload");
    let namespace = warm.metadata.namespace.as_deref().expect("namespace");
    let input = Input {
        namespace,
        name: warm.metadata.name.as_deref().expect("name"),
        uid: "uid-1",
        generation: 1,
        spec: &warm.spec,
        status: None,
    };
    let store_name = validate(&input).expect("the planner accepts the sample");
    assert_eq!(store_name, format!("{namespace}.{}", warm.spec.workspace));
    // The sample workspace (workspace.yaml) has its own object store: a Preload of it would
    // be Unsupported, so the Preload sample must name another one.
    let ws: Workspace = serde_saphyr::from_str(&sample("workspace.yaml")).expect("Workspace");
    assert!(ws.spec.object_store.is_some());
    assert_ne!(ws.metadata.name.as_deref(), Some(warm.spec.workspace.as_str()));
}

// Catches: a sample the schema accepts but the planner (the engine's compile) refuses, which
// would sit at InvalidSpec.
#[test]
fn the_media_datastore_sample_passes_the_planners_checks() {
    use operator::plan::mediadatastore::{Input, desired_datastore};
    let shots: MediaDataStore =
        serde_saphyr::from_str(&sample("mediadatastore.yaml")).expect("MediaDataStore");
    let namespace = shots.metadata.namespace.as_deref().expect("namespace");
    let input = Input {
        namespace,
        name: shots.metadata.name.as_deref().expect("name"),
        generation: 1,
        spec: &shots.spec,
        status: None,
    };
    let wanted = desired_datastore(&input).expect("the planner accepts the sample");
    assert_eq!(wanted.name, "studio-a/shot-boundaries");
    assert_eq!(wanted.access.writers, ["ServiceAccount:studio-a/shot-detector"]);
    assert_eq!(wanted.access.admins, ["ServiceAccount:pipeline/pipeline-admin"]);
    // A document as the comment describes passes the sample's schema and media id schema.
    let compiled = drive::media::CompiledDataStore::compile(wanted).expect("compiles");
    compiled
        .check_document(
            &json!({"fps": 24, "detector": "scenecut-v2", "shots": [{"start": 1001, "end": 1048}]}),
        )
        .expect("a document");
    compiled
        .check_media_id(&json!({"asset": "sh010_plate", "version": 3}))
        .expect("a media id");
}

fn media_datastore(name: &str, spec: Value) -> Value {
    named("MediaDataStore", name, spec)
}

fn media_datastore_spec() -> Value {
    json!({"analysisType": "shot-boundaries", "version": 1,
           "schema": {"type": "object", "required": ["fps"]},
           "mediaIdSchema": {"type": "object", "required": ["asset"]}})
}

fn with(mut base: Value, field: &str, v: Value) -> Value {
    base[field] = v;
    base
}

fn workspace(spec: Value) -> Value {
    json!({"apiVersion": "studiodrive.dev/v1alpha1", "kind": "Workspace",
           "metadata": {"name": "ws", "namespace": "ns"}, "spec": spec})
}

fn named(kind: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "studiodrive.dev/v1alpha1", "kind": kind,
           "metadata": {"name": name, "namespace": "ns"}, "spec": spec})
}

fn preload(name: &str, spec: Value) -> Value {
    named("Preload", name, spec)
}

fn policy(rules: Value) -> Value {
    json!({"apiVersion": "studiodrive.dev/v1alpha1", "kind": "LifecyclePolicy",
           "metadata": {"name": "p"}, "spec": {"rules": rules}})
}

#[test]
fn malformed_specs_are_rejected_by_schema_or_cel() {
    let long = "a".repeat(254);
    // With its namespace (at most 63) and '/', a Preload's name must fit the store's 253.
    let long_preload = "p".repeat(190);
    let preload_ok = json!({"workspace": "ws", "manifest": "seq/f.%04d.exr [1-10]\n"});
    let share_ok =
        json!({"workspace": "ws", "subjects": [{"kind": "User", "name": "alice"}], "permission": "read"});
    let corpus: Vec<(&str, Value, &str)> = vec![
        (
            "kind has the wrong type",
            workspace(json!({"kind": 3})),
            "expected \"string\"",
        ),
        (
            "unknown kind",
            workspace(json!({"kind": "scratch"})),
            "is not one of",
        ),
        (
            "unknown field",
            workspace(json!({"kind": "user", "colour": "red"})),
            "unknown field",
        ),
        (
            "block size as a string",
            workspace(json!({"blockSizeBytes": "4MiB"})),
            "expected \"integer\"",
        ),
        (
            "block size too small",
            workspace(json!({"blockSizeBytes": 4096})),
            "less than the minimum",
        ),
        (
            "negative quota",
            workspace(json!({"quotaBytes": -1})),
            "less than the minimum",
        ),
        (
            "encryption without key",
            workspace(json!({"encryption": {"enabled": true}})),
            "needs keySecretRef",
        ),
        (
            "inline credentials",
            workspace(json!({"objectStore": {"bucket": "b-1", "accessKey": "AKIA"}})),
            "unknown field",
        ),
        (
            "endpoint not a URL",
            workspace(json!({"objectStore": {"bucket": "b-1", "endpoint": "s3.local"}})),
            "http(s) URL",
        ),
        (
            "secret name with a slash",
            workspace(json!({"encryption": {"enabled": true, "keySecretRef": {"name": "a/b", "key": "k"}}})),
            "Secret name",
        ),
        (
            "workspace name with a slash",
            named("Workspace", "a/b", json!({})),
            "DNS-1123",
        ),
        (
            "workspace name with NUL",
            named("Workspace", "a\u{0}b", json!({})),
            "DNS-1123",
        ),
        (
            "workspace name over 253 characters",
            named("Workspace", &long, json!({})),
            "DNS-1123",
        ),
        (
            "snapshot of a workspace with a slash",
            named("Snapshot", "s", json!({"workspace": "a/b"})),
            "workspace must name",
        ),
        (
            "snapshot workspace with NUL",
            named("Snapshot", "s", json!({"workspace": "a\u{0}b"})),
            "workspace must name",
        ),
        (
            "snapshot workspace over 253 characters",
            named("Snapshot", "s", json!({"workspace": long})),
            "more than 253",
        ),
        (
            "snapshot relative path",
            named("Snapshot", "s", json!({"workspace": "ws", "path": "comp"})),
            "absolute",
        ),
        (
            "snapshot path with dot-dot",
            named("Snapshot", "s", json!({"workspace": "ws", "path": "/a/../b"})),
            "absolute",
        ),
        (
            "snapshot without workspace",
            named("Snapshot", "s", json!({"path": "/"})),
            "required",
        ),
        (
            "snapshot name with a slash",
            named("Snapshot", "a/b", json!({"workspace": "ws"})),
            "DNS-1123",
        ),
        (
            "share without subjects",
            named(
                "Share",
                "s",
                json!({"workspace": "ws", "subjects": [], "permission": "read"}),
            ),
            "fewer than 1",
        ),
        (
            "share with unknown permission",
            named(
                "Share",
                "s",
                json!({"workspace": "ws", "subjects": [{"kind": "User", "name": "a"}], "permission": "owner"}),
            ),
            "is not one of",
        ),
        (
            "share subject of unknown kind",
            named(
                "Share",
                "s",
                json!({"workspace": "ws", "subjects": [{"kind": "Robot", "name": "a"}], "permission": "read"}),
            ),
            "is not one of",
        ),
        (
            "namespaced user subject",
            named(
                "Share",
                "s",
                json!({"workspace": "ws", "subjects": [{"kind": "User", "name": "a", "namespace": "x"}], "permission": "read"}),
            ),
            "only ServiceAccount",
        ),
        (
            "share expiry not a time",
            named(
                "Share",
                "s",
                json!({"workspace": "ws", "subjects": [{"kind": "User", "name": "a"}], "permission": "read", "expiresAt": "tomorrow"}),
            ),
            "RFC 3339",
        ),
        (
            "share name with NUL",
            named("Share", "a\u{0}b", share_ok.clone()),
            "DNS-1123",
        ),
        (
            "event sink with both targets",
            named(
                "EventSink",
                "s",
                json!({"workspace": "ws", "webhook": {"url": "https://h"}, "nats": {"url": "nats://n:4222", "subject": "a"}}),
            ),
            "exactly one of nats or webhook",
        ),
        (
            "event sink without a target",
            named("EventSink", "s", json!({"workspace": "ws"})),
            "exactly one of nats or webhook",
        ),
        (
            "webhook with a nats url",
            named(
                "EventSink",
                "s",
                json!({"workspace": "ws", "webhook": {"url": "nats://n:4222"}}),
            ),
            "webhook.url must start with http",
        ),
        (
            "nats with an http url",
            named(
                "EventSink",
                "s",
                json!({"workspace": "ws", "nats": {"url": "http://n", "subject": "a"}}),
            ),
            "nats.url must start with nats://",
        ),
        (
            "wildcard nats subject",
            named(
                "EventSink",
                "s",
                json!({"workspace": "ws", "nats": {"url": "nats://n:4222", "subject": "studio.>"}}),
            ),
            "no wildcards",
        ),
        (
            "relative path prefix",
            named(
                "EventSink",
                "s",
                json!({"workspace": "ws", "webhook": {"url": "https://h"}, "filter": {"pathPrefixes": ["comp"]}}),
            ),
            "path prefixes must be absolute",
        ),
        (
            "upper-case event kind",
            named(
                "EventSink",
                "s",
                json!({"workspace": "ws", "webhook": {"url": "https://h"}, "filter": {"kinds": ["Create"]}}),
            ),
            "kinds are lower-case",
        ),
        (
            "unknown start",
            named(
                "EventSink",
                "s",
                json!({"workspace": "ws", "webhook": {"url": "https://h"}, "startFrom": "Yesterday"}),
            ),
            "is not one of",
        ),
        (
            "preload of a workspace with a slash",
            preload("p", json!({"workspace": "a/b", "manifest": "a\n"})),
            "workspace must name a Workspace",
        ),
        (
            "preload of an upper-case workspace",
            preload("p", json!({"workspace": "Shot010", "manifest": "a\n"})),
            "workspace must name a Workspace",
        ),
        (
            "preload workspace over 253 characters",
            preload("p", json!({"workspace": long, "manifest": "a\n"})),
            "more than 253",
        ),
        (
            "preload name over 189 characters",
            preload(&long_preload, preload_ok.clone()),
            "at most 189 characters",
        ),
        (
            "preload name with a slash",
            preload("a/b", preload_ok.clone()),
            "DNS-1123",
        ),
        (
            "preload with an empty manifest",
            preload("p", json!({"workspace": "ws", "manifest": ""})),
            "0 characters, fewer than 1",
        ),
        (
            "preload manifest over 64 KiB",
            preload("p", json!({"workspace": "ws", "manifest": "a".repeat(65537)})),
            "more than 65536",
        ),
        (
            "preload without a manifest",
            preload("p", json!({"workspace": "ws"})),
            "manifest: required",
        ),
        (
            "preload deadline not a time",
            preload(
                "p",
                json!({"workspace": "ws", "manifest": "a\n", "deadline": "tonight"}),
            ),
            "RFC 3339",
        ),
        (
            "preload node selector of node names",
            preload(
                "p",
                json!({"workspace": "ws", "manifest": "a\n", "nodeSelector": {"nodeNames": ["n1"]}}),
            ),
            "unknown field",
        ),
        (
            "media datastore with an unknown deletion policy",
            media_datastore(
                "m",
                with(media_datastore_spec(), "deletionPolicy", json!("Destroy")),
            ),
            "is not one of",
        ),
        (
            "media datastore with a lower-case deletion policy",
            media_datastore(
                "m",
                with(media_datastore_spec(), "deletionPolicy", json!("delete")),
            ),
            "is not one of",
        ),
        (
            "media datastore without a media id schema",
            media_datastore("m", {
                let mut spec = media_datastore_spec();
                spec.as_object_mut().expect("spec").remove("mediaIdSchema");
                spec
            }),
            "mediaIdSchema: required",
        ),
        (
            "media datastore schema that is not an object",
            media_datastore(
                "m",
                with(media_datastore_spec(), "schema", json!("{\"type\": \"object\"}")),
            ),
            "expected \"object\"",
        ),
        (
            "media datastore of version 0",
            media_datastore("m", with(media_datastore_spec(), "version", json!(0))),
            "less than the minimum",
        ),
        (
            "analysis type with a space",
            media_datastore(
                "m",
                with(media_datastore_spec(), "analysisType", json!("shot boundaries")),
            ),
            "analysisType must be",
        ),
        (
            "queryable path with an empty segment",
            media_datastore(
                "m",
                with(media_datastore_spec(), "queryable", json!(["fps", "a..b"])),
            ),
            "queryable paths are",
        ),
        (
            "queryable path listed twice",
            media_datastore(
                "m",
                with(media_datastore_spec(), "queryable", json!(["fps", "fps"])),
            ),
            "duplicate",
        ),
        (
            "timeline path with a slash",
            media_datastore(
                "m",
                with(
                    media_datastore_spec(),
                    "timeline",
                    json!([{"path": "a/b", "start": "t"}]),
                ),
            ),
            "timeline paths are",
        ),
        (
            "timeline item without a start",
            media_datastore(
                "m",
                with(media_datastore_spec(), "timeline", json!([{"path": "shots"}])),
            ),
            "start: required",
        ),
        (
            "user subject with a namespace",
            media_datastore(
                "m",
                with(
                    media_datastore_spec(),
                    "readers",
                    json!([{"kind": "User", "name": "alice", "namespace": "studio"}]),
                ),
            ),
            "only ServiceAccount subjects have a namespace",
        ),
        (
            "subject of an unknown kind",
            media_datastore(
                "m",
                with(
                    media_datastore_spec(),
                    "writers",
                    json!([{"kind": "Robot", "name": "r2"}]),
                ),
            ),
            "is not one of",
        ),
        (
            "media datastore name over 189 characters",
            media_datastore(&long_preload, media_datastore_spec()),
            "at most 189 characters",
        ),
        (
            "negative retention",
            policy(json!({"purgeDeletedAfterDays": -7})),
            "less than the minimum",
        ),
        (
            "zero retention",
            policy(json!({"purgeDeletedAfterDays": 0})),
            "less than the minimum",
        ),
        (
            "retention as a string",
            policy(json!({"purgeDeletedAfterDays": "30d"})),
            "expected \"integer\"",
        ),
        ("policy without rules", policy(json!({})), "at least one rule"),
        (
            "policy with an empty list of retention classes only",
            policy(json!({"retentionClasses": []})),
            "at least one rule",
        ),
        (
            "relative retention class path",
            policy(json!({"retentionClasses": [{"pathPrefix": "renders", "days": 7}]})),
            "pathPrefix must be absolute",
        ),
        (
            "retention class of zero days",
            policy(json!({"retentionClasses": [{"days": 0}]})),
            "less than the minimum",
        ),
        (
            "retention class of an unknown kind",
            policy(json!({"retentionClasses": [{"kinds": ["scratch"], "days": 7}]})),
            "scratch",
        ),
        (
            "zero days of event retention",
            policy(json!({"eventRetentionDays": 0})),
            "less than the minimum",
        ),
        (
            "snapshot retention without limits",
            policy(json!({"snapshotRetention": {}})),
            "keepLast or maxAgeDays",
        ),
        (
            "negative keepLast",
            policy(json!({"snapshotRetention": {"keepLast": -1}})),
            "less than the minimum",
        ),
        (
            "relative expire path",
            policy(json!({"expire": {"paths": ["scratch"], "notAccessedForDays": 3}})),
            "absolute",
        ),
        (
            "lowercase storage class",
            policy(json!({"transition": {"storageClass": "glacier", "afterDays": 3}})),
            "storage class",
        ),
        (
            "zero deletes per second",
            json!({"apiVersion": "studiodrive.dev/v1alpha1", "kind": "LifecyclePolicy", "metadata": {"name": "p"},
            "spec": {"rules": {"purgeDeletedAfterDays": 7}, "throttle": {"deletesPerSecond": 0}}}),
            "less than the minimum",
        ),
    ];
    let mut accepted = Vec::new();
    for (what, value, expected) in &corpus {
        let found = problems(value, None);
        if !found.iter().any(|p| p.contains(expected)) {
            accepted.push(format!(
                "{what}: expected a problem containing {expected:?}, got {found:?}"
            ));
        }
    }
    assert!(accepted.is_empty(), "{accepted:#?}");
}

#[test]
fn edits_of_immutable_fields_are_rejected_and_mutable_edits_pass() {
    let base = workspace(
        json!({"kind": "team", "blockSizeBytes": 8388608, "quotaBytes": 100,
        "objectStore": {"bucket": "b-1"}}),
    );
    let edit = |path: &[&str], v: Value| {
        let mut new = base.clone();
        let mut node = &mut new["spec"];
        for p in &path[..path.len() - 1] {
            node = &mut node[*p];
        }
        node[path[path.len() - 1]] = v;
        new
    };
    let forbidden: Vec<(Value, &str)> = vec![
        (edit(&["kind"], json!("project")), "kind is immutable"),
        (
            edit(&["blockSizeBytes"], json!(4194304)),
            "blockSizeBytes is immutable",
        ),
        (
            edit(&["objectStore", "bucket"], json!("b-2")),
            "objectStore is immutable",
        ),
        (
            edit(
                &["encryption"],
                json!({"enabled": true, "keySecretRef": {"name": "k", "key": "kek"}}),
            ),
            "encryption cannot be turned on",
        ),
    ];
    for (new, expected) in &forbidden {
        let found = problems(new, Some(&base));
        assert!(
            found.iter().any(|p| p.contains(expected)),
            "expected {expected:?}, got {found:?}"
        );
    }
    let allowed = edit(&["quotaBytes"], json!(200));
    assert_eq!(problems(&allowed, Some(&base)), Vec::<String>::new());
    let removed_store = {
        let mut v = base.clone();
        v["spec"]
            .as_object_mut()
            .expect("spec object")
            .remove("objectStore");
        v
    };
    assert!(
        problems(&removed_store, Some(&base))
            .iter()
            .any(|p| p.contains("cannot be added or removed"))
    );

    let snap = named("Snapshot", "s", json!({"workspace": "ws", "path": "/a"}));
    let moved = named("Snapshot", "s", json!({"workspace": "ws", "path": "/b"}));
    assert!(
        problems(&moved, Some(&snap))
            .iter()
            .any(|p| p.contains("spec is immutable"))
    );
    let share = named(
        "Share",
        "s",
        json!({"workspace": "ws", "subjects": [{"kind": "User", "name": "a"}], "permission": "read"}),
    );
    let mut reshared = share.clone();
    reshared["spec"]["workspace"] = json!("other");
    assert!(
        problems(&reshared, Some(&share))
            .iter()
            .any(|p| p.contains("workspace is immutable"))
    );
    let sink = named(
        "EventSink",
        "s",
        json!({"workspace": "ws", "webhook": {"url": "https://h/a"}}),
    );
    let mut moved_sink = sink.clone();
    moved_sink["spec"]["workspace"] = json!("other");
    assert!(
        problems(&moved_sink, Some(&sink))
            .iter()
            .any(|p| p.contains("workspace is immutable"))
    );
    let mut retargeted = sink.clone();
    retargeted["spec"]["webhook"]["url"] = json!("https://h/b");
    assert_eq!(problems(&retargeted, Some(&sink)), Vec::<String>::new());
    let mut upgraded = share.clone();
    upgraded["spec"]["permission"] = json!("write");
    assert_eq!(problems(&upgraded, Some(&share)), Vec::<String>::new());

    // A MediaDataStore's media id schema is immutable (the store keys documents by media id);
    // its document schema, subjects and deletion policy are not.
    let mds = media_datastore(
        "m",
        with(
            media_datastore_spec(),
            "readers",
            json!([{"kind": "Group", "name": "review"}]),
        ),
    );
    assert_eq!(problems(&mds, Some(&mds)), Vec::<String>::new());
    for edit in [
        json!({"type": "object", "required": ["uuid"]}),
        json!({"type": "object", "required": ["asset"], "properties": {"asset": {"type": "string"}}}),
        json!({}),
    ] {
        let moved = {
            let mut v = mds.clone();
            v["spec"]["mediaIdSchema"] = edit.clone();
            v
        };
        let found = problems(&moved, Some(&mds));
        assert!(
            found.iter().any(|p| p.contains("mediaIdSchema is immutable")),
            "{edit}: {found:?}"
        );
    }
    for (field, value) in [
        ("schema", json!({"type": "object", "required": ["fps", "shots"]})),
        ("version", json!(2)),
        ("deletionPolicy", json!("Delete")),
        ("writers", json!([{"kind": "ServiceAccount", "name": "detector"}])),
        ("queryable", json!(["fps"])),
    ] {
        let mut changed = mds.clone();
        changed["spec"][field] = value;
        assert_eq!(problems(&changed, Some(&mds)), Vec::<String>::new(), "{field}");
    }

    // A Preload's whole spec is immutable: its status never mixes runs of two specs.
    let warm = preload(
        "p",
        json!({"workspace": "ws", "manifest": "seq/f.%04d.exr [1-10]\n",
               "nodeSelector": {"matchLabels": {"studiodrive.dev/render": "true"}},
               "deadline": "2027-01-15T18:00:00Z"}),
    );
    assert_eq!(problems(&warm, Some(&warm)), Vec::<String>::new());
    let edits: [(&str, Value); 5] = [
        ("workspace", json!("other")),
        ("manifest", json!("seq/f.%04d.exr [1-20]\n")),
        (
            "nodeSelector",
            json!({"matchLabels": {"studiodrive.dev/render": "false"}}),
        ),
        ("deadline", json!("2027-01-16T18:00:00Z")),
        ("nodeSelector", json!({})),
    ];
    for (field, value) in edits {
        let mut edited = warm.clone();
        edited["spec"][field] = value;
        let found = problems(&edited, Some(&warm));
        assert!(
            found.iter().any(|p| p.contains("spec is immutable")),
            "{field}: {found:?}"
        );
    }
    let mut no_deadline = warm.clone();
    no_deadline["spec"]
        .as_object_mut()
        .expect("spec object")
        .remove("deadline");
    assert!(
        problems(&no_deadline, Some(&warm))
            .iter()
            .any(|p| p.contains("spec is immutable"))
    );
    // Metadata and status are not the spec.
    let mut labelled = warm.clone();
    labelled["metadata"]["labels"] = json!({"team": "comp"});
    assert_eq!(problems(&labelled, Some(&warm)), Vec::<String>::new());
}

#[test]
fn typed_validate_cel_agrees_with_the_schema_walk() {
    // The derive's generated methods use the same rules; a typed object that breaks one fails.
    let mut ws: Workspace = serde_json::from_value(workspace(json!({"kind": "user"}))).expect("typed");
    assert!(ws.validate_cel().is_ok());
    let old = ws.clone();
    ws.spec.kind = crd::WorkspaceKind::Project;
    assert!(ws.validate_cel_update(&old).is_err());
    assert_eq!(Workspace::crd().spec.names.kind, "Workspace");
}

#[test]
fn retention_classes_or_event_retention_alone_make_a_valid_policy() {
    for rules in [
        json!({"retentionClasses": [{"kinds": ["project"], "pathPrefix": "/finals", "days": 180}]}),
        json!({"eventRetentionDays": 30}),
    ] {
        let found = problems(&policy(rules.clone()), None);
        assert!(found.is_empty(), "{rules}: {found:?}");
        let typed: LifecyclePolicy = serde_json::from_value(policy(rules)).expect("LifecyclePolicy");
        assert!(typed.spec.rules != operator::crd::LifecycleRules::default());
    }
}
