//! The generated CRDs: checked-in copies are current, schemas are structural, and the
//! printer columns, short names and scopes are what users are told they are.

use std::path::PathBuf;

use operator::crd::{self, schema_check};

fn crds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds")
}

#[test]
fn checked_in_crds_match_the_generated_ones() {
    let mut stale = Vec::new();
    for def in crd::all() {
        let path = crds_dir().join(crd::file_name(&def));
        let want = crd::to_yaml(&def).expect("render CRD");
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        if have != want {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "stale CRD files {stale:?}; regenerate with `cargo run -p drive-operator -- crds --out-dir crds`"
    );
}

#[test]
fn every_crd_schema_is_structural() {
    for def in crd::all() {
        let name = def.metadata.name.clone().unwrap_or_default();
        for version in &def.spec.versions {
            let schema = version
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .expect("every version has a schema");
            let schema = serde_json::to_value(schema).expect("schema as JSON");
            let violations = schema_check::structural_violations(&schema);
            assert!(violations.is_empty(), "{name}: {violations:#?}");
        }
    }
}

#[test]
fn crds_have_short_names_category_status_and_the_decided_scope() {
    let expected = [
        ("workspaces.studiodrive.dev", "sdws", "Namespaced"),
        ("snapshots.studiodrive.dev", "sdsnap", "Namespaced"),
        ("shares.studiodrive.dev", "sdshare", "Namespaced"),
        ("lifecyclepolicies.studiodrive.dev", "sdlp", "Cluster"),
        ("eventsinks.studiodrive.dev", "sdsink", "Namespaced"),
        ("preloads.studiodrive.dev", "sdpreload", "Namespaced"),
        ("mediadatastores.studiodrive.dev", "sdmds", "Namespaced"),
    ];
    let all = crd::all();
    assert_eq!(all.len(), expected.len());
    for (def, (name, short, scope)) in all.iter().zip(expected) {
        assert_eq!(def.metadata.name.as_deref(), Some(name));
        assert_eq!(
            def.spec.names.short_names.as_deref(),
            Some(&[short.to_string()][..])
        );
        assert_eq!(
            def.spec.names.categories.as_deref(),
            Some(&["studiodrive".to_string()][..])
        );
        assert_eq!(def.spec.scope, scope);
        let version = &def.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{name} has no status subresource"
        );
        let columns = version.additional_printer_columns.as_deref().unwrap_or_default();
        assert!(
            columns.iter().any(|c| c.name == "Age"),
            "{name} lacks an Age column"
        );
    }
}

#[test]
fn all_yaml_is_a_stream_of_seven_crd_documents() {
    let yaml = crd::all_yaml().expect("render");
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&yaml).expect("parse the stream back");
    assert_eq!(docs.len(), 7);
    for doc in docs {
        assert_eq!(doc["kind"], "CustomResourceDefinition");
        assert_eq!(doc["spec"]["group"], "studiodrive.dev");
    }
}

// Catches: a MediaDataStore schema field generated untyped (the API server refuses a CEL rule
// on an untyped node, so the CRD would not install with mediaIdSchema's immutability rule) or
// without preserve-unknown-fields (the API server would prune every JSON Schema keyword);
// printer columns users are told about missing.
#[test]
fn media_datastore_schemas_are_objects_kept_whole_and_media_id_schema_is_immutable() {
    let def = crd::all()
        .into_iter()
        .find(|c| c.spec.names.kind == "MediaDataStore")
        .expect("the MediaDataStore CRD");
    let schema = schema_check::crd_schema(&def);
    let spec = &schema["properties"]["spec"];
    for field in ["schema", "mediaIdSchema"] {
        let node = &spec["properties"][field];
        assert_eq!(node["type"], "object", "{field}: {node}");
        assert_eq!(node["x-kubernetes-preserve-unknown-fields"], true, "{field}");
        assert!(node.get("properties").is_none(), "{field}: {node}");
    }
    let rules = &spec["properties"]["mediaIdSchema"]["x-kubernetes-validations"];
    assert_eq!(rules[0]["rule"], "self == oldSelf", "{rules}");
    assert_eq!(
        spec["properties"]["deletionPolicy"]["enum"],
        serde_json::json!(["Retain", "Delete"])
    );
    assert_eq!(spec["properties"]["deletionPolicy"]["default"], "Retain");
    assert_eq!(spec["properties"]["queryable"]["x-kubernetes-list-type"], "set");
    let required: Vec<&str> = spec["required"]
        .as_array()
        .expect("required")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for field in ["analysisType", "version", "schema", "mediaIdSchema"] {
        assert!(required.contains(&field), "{field} is required: {required:?}");
    }
    let columns: Vec<String> = def.spec.versions[0]
        .additional_printer_columns
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|c| c.name.clone())
        .collect();
    for column in ["Ready", "Reason", "Analysis", "Version", "Age"] {
        assert!(columns.iter().any(|c| c == column), "{column} in {columns:?}");
    }
}
