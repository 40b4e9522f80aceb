//! The samples the Argo CD health checks are tested on (deploy/argocd/testdata/<Kind>.json,
//! run by tests/argocd/test_health.py) are objects the operator could have written: each
//! parses as its kind, and its status serialises back unchanged. A status field renamed or
//! retyped here, or a sample that invents one, fails.

use std::path::PathBuf;

use operator::crd::{EventSink, LifecyclePolicy, MediaDataStore, Preload, Share, Snapshot, Workspace};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn samples(kind: &str) -> Vec<serde_json::Value> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../deploy/argocd/testdata/{kind}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Parses every sample of `kind` as `R` and checks that its status round-trips. Returns how
/// many samples had a status.
fn round_trip<R, S>(kind: &str, status: impl Fn(&R) -> Option<&S>) -> usize
where
    R: DeserializeOwned,
    S: Serialize,
{
    let mut with_status = 0;
    for sample in samples(kind) {
        let case = sample["case"].as_str().expect("case name");
        let object = &sample["object"];
        assert_eq!(object["kind"], kind, "{case}");
        assert_eq!(object["apiVersion"], "studiodrive.dev/v1alpha1", "{case}");
        let parsed: R =
            serde_json::from_value(object.clone()).unwrap_or_else(|e| panic!("{kind} {case:?}: {e}"));
        let Some(written) = status(&parsed) else {
            assert!(object.get("status").is_none(), "{case}");
            continue;
        };
        with_status += 1;
        let written = serde_json::to_value(written).expect("serialise status");
        assert_eq!(
            written, object["status"],
            "{kind} {case:?}: the status the operator would write differs from the sample"
        );
    }
    with_status
}

#[test]
fn argocd_health_samples_are_statuses_the_operator_writes() {
    let counts = [
        round_trip::<Workspace, _>("Workspace", |r| r.status.as_ref()),
        round_trip::<Snapshot, _>("Snapshot", |r| r.status.as_ref()),
        round_trip::<Share, _>("Share", |r| r.status.as_ref()),
        round_trip::<LifecyclePolicy, _>("LifecyclePolicy", |r| r.status.as_ref()),
        round_trip::<EventSink, _>("EventSink", |r| r.status.as_ref()),
        round_trip::<Preload, _>("Preload", |r| r.status.as_ref()),
        round_trip::<MediaDataStore, _>("MediaDataStore", |r| r.status.as_ref()),
    ];
    assert!(
        counts.iter().all(|&n| n >= 4),
        "samples with a status per kind: {counts:?}"
    );
}

/// Condition reasons the operator defines but never writes to a status (no planner or
/// reconcile path uses them today). One that starts to be written must leave this list.
const REASONS_NOT_WRITTEN: &[&str] = &["Deleting"];

/// The reasons of `operator::crd::conditions::reason`, read from its source so that a reason
/// added there is seen here without anyone listing it.
fn defined_reasons() -> std::collections::BTreeSet<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/crd/conditions.rs");
    let source = std::fs::read_to_string(&path).expect("read conditions.rs");
    let module = source
        .split("pub mod reason {")
        .nth(1)
        .and_then(|rest| rest.split("\n}").next())
        .expect("a reason module in conditions.rs");
    let mut out: std::collections::BTreeSet<String> = module
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .filter_map(|l| l.split('"').nth(1))
        .map(str::to_string)
        .collect();
    out.insert(operator::plan::snapshot::SNAPSHOT_LOST.to_string());
    out
}

// Catches: a condition reason added to the operator with no Argo CD sample, whose health the
// Lua checks would then decide by default (Progressing) without anyone choosing it.
#[test]
fn every_condition_reason_has_an_argocd_health_sample() {
    let defined = defined_reasons();
    assert!(
        defined.contains(operator::crd::conditions::reason::PASS_FAILED),
        "{defined:?}"
    );
    let mut sampled = std::collections::BTreeSet::new();
    for kind in [
        "Workspace",
        "Snapshot",
        "Share",
        "LifecyclePolicy",
        "EventSink",
        "Preload",
        "MediaDataStore",
    ] {
        for sample in samples(kind) {
            for c in sample["object"]["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
            {
                sampled.insert(c["reason"].as_str().expect("reason").to_string());
            }
        }
    }
    let unsampled: Vec<&String> = defined
        .iter()
        .filter(|r| !sampled.contains(*r) && !REASONS_NOT_WRITTEN.contains(&r.as_str()))
        .collect();
    assert!(
        unsampled.is_empty(),
        "reasons no deploy/argocd/testdata sample shows: {unsampled:?}"
    );
    let unknown: Vec<&String> = sampled.iter().filter(|r| !defined.contains(*r)).collect();
    assert!(
        unknown.is_empty(),
        "samples use reasons the operator does not define: {unknown:?}"
    );
}
