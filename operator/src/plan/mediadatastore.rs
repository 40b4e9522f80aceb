//! Planner for `MediaDataStore`: keep the store's DataStore `<namespace>/<name>` equal to the
//! spec, as far as the store allows.
//!
//! The spec is turned into the engine's [`DataStoreSpec`] and compiled with the engine's own
//! [`CompiledDataStore::compile`] (subjects, queryable and timeline paths, both JSON Schemas),
//! so nothing the store would refuse as malformed reaches it; what does not compile is
//! `InvalidSpec`. A stored DataStore whose media id schema differs from the spec's is
//! `MediaIdSchemaImmutable` (CEL stops the edit; this catches a DataStore adopted from an
//! earlier resource or written by another client). Whether stored documents pass a new
//! schema only the store can say, when the change is put: its refusal (`SchemaRefused`)
//! reaches the status through the reconciler's failure path (`reconcile::refusal_conditions`),
//! retried with backoff.

use std::time::Duration;

use drive::media::{CompiledDataStore, DataStoreAccess, DataStoreSpec, Invalid, RegionSpec, TimelineSpec};
use jiff::Timestamp;

use super::{
    EventNote, Plan, RESYNC, SpecError, invalid_spec_conditions, invalid_spec_event, previous_ready_reason,
};
use crate::crd::conditions::{self, Desired, reason};
use crate::crd::{
    DeletionPolicy, MediaDataStoreSpec, MediaDataStoreStatus, Subject, SubjectKind, TimelineCollection,
};
use crate::store::{MediaDataStoreRecord, same_datastore, same_json};

/// The resource being planned.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub generation: i64,
    pub spec: &'a MediaDataStoreSpec,
    pub status: Option<&'a MediaDataStoreStatus>,
}

/// What the store holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// The DataStore recorded under [`store_name`].
    pub record: Option<MediaDataStoreRecord>,
}

/// A store operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Create the DataStore or change it (the store may refuse: `PutDataStoreError`). Boxed:
    /// a spec holds two JSON Schemas.
    Put(Box<DataStoreSpec>),
    /// Remove the DataStore and its documents.
    Delete { name: String },
}

/// The first half of the store's own DataStores' names (`studiodrive/technical`, the technical
/// metadata the mounts extract). A Kubernetes namespace of that name would claim them: a
/// MediaDataStore `technical` there would rewrite the built-in one, or delete it with its
/// documents under `deletionPolicy: Delete`.
pub const BUILT_IN_PREFIX: &str = drive::media::BUILT_IN_NAMESPACE;

/// The store name of resource `namespace/name`: `<namespace>/<name>`. Neither half can hold a
/// '/', so two resources never share a DataStore, whatever their namespaces; the namespace
/// [`BUILT_IN_PREFIX`] names none (so neither observe nor cleanup ever reads or deletes a
/// built-in DataStore).
pub fn store_name(namespace: &str, name: &str) -> Result<String, SpecError> {
    if namespace.is_empty() || namespace.contains('/') || name.is_empty() || name.contains('/') {
        return Err(SpecError(format!(
            "{namespace:?}/{name:?} cannot name a DataStore"
        )));
    }
    if namespace == BUILT_IN_PREFIX {
        return Err(SpecError(format!(
            "namespace {BUILT_IN_PREFIX} holds the store's built-in DataStores ({BUILT_IN_PREFIX}/technical): \
             declare MediaDataStores in another namespace"
        )));
    }
    let full = format!("{namespace}/{name}");
    drive::media::validate_name(&full).map_err(|e| SpecError(format!("the DataStore's store {e}")))?;
    Ok(full)
}

/// The subjects of one role as the store records them, sorted and without duplicates. Each is
/// checked on its own first, so a message names its place in the spec (`spec.writers[1]`).
fn store_subjects(role: &str, subjects: &[Subject], namespace: &str) -> Result<Vec<String>, SpecError> {
    let mut out = Vec::with_capacity(subjects.len());
    for (i, s) in subjects.iter().enumerate() {
        let at = || format!("spec.{role}[{i}]");
        if s.kind != SubjectKind::ServiceAccount && s.namespace.is_some() {
            return Err(SpecError(format!(
                "{}: only ServiceAccount subjects have a namespace",
                at()
            )));
        }
        if s.name.contains('\0') {
            return Err(SpecError(format!("{}: the name contains NUL", at())));
        }
        let subject = s.to_store_subject(namespace);
        drive::media::validate_subject(&subject).map_err(|e| SpecError(format!("{}: {e}", at())))?;
        out.push(subject);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn timeline_spec(t: &TimelineCollection) -> TimelineSpec {
    TimelineSpec {
        path: t.path.clone(),
        start: t.start.clone(),
        end: t.end.clone(),
        region: t.region.as_ref().map(|r| RegionSpec {
            x: r.x.clone(),
            y: r.y.clone(),
            width: r.width.clone(),
            height: r.height.clone(),
        }),
    }
}

/// The place in the resource of an engine error about the DataStore (`/queryable/2` is
/// `spec.queryable[2]`, `/timeline/0/region/x` is `spec.timeline[0].region.x`).
fn resource_path(pointer: &str) -> String {
    let mut segments = pointer.trim_start_matches('/').split('/').peekable();
    if segments.peek() == Some(&"name") {
        return "metadata.name".into();
    }
    // Access lists are fields of the spec itself.
    if segments.peek() == Some(&"access") {
        segments.next();
    }
    let mut out = String::from("spec");
    for segment in segments.filter(|s| !s.is_empty()) {
        if segment.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{segment}]"));
        } else {
            out.push('.');
            out.push_str(segment);
        }
    }
    out
}

/// An engine error as the resource's author reads it: about the DataStore, at its place in
/// the spec; about a schema, prefixed by the field holding it.
fn spec_error(e: &Invalid) -> SpecError {
    match e.what {
        "the DataStore" => SpecError(format!("{}: {}", resource_path(&e.path), e.message)),
        "the media id schema" => SpecError(format!("spec.mediaIdSchema: {e}")),
        _ => SpecError(format!("spec.schema: {e}")),
    }
}

/// The DataStore a resource asks for, checked by the engine's compile (so nothing the store
/// would refuse as malformed reaches it).
pub fn desired_datastore(input: &Input<'_>) -> Result<DataStoreSpec, SpecError> {
    let name = store_name(input.namespace, input.name)?;
    let spec = input.spec;
    if spec.version == 0 {
        return Err(SpecError("spec.version: at least 1".into()));
    }
    // The store refuses them too; said here in the resource's own terms.
    if let Some((first, i)) = drive::media::first_repeat(&spec.queryable) {
        return Err(SpecError(format!(
            "spec.queryable[{i}]: {:?} is listed already at spec.queryable[{first}]",
            spec.queryable[i]
        )));
    }
    let access = DataStoreAccess {
        readers: store_subjects("readers", &spec.readers, input.namespace)?,
        writers: store_subjects("writers", &spec.writers, input.namespace)?,
        admins: store_subjects("admins", &spec.admins, input.namespace)?,
    };
    let wanted = DataStoreSpec {
        name,
        analysis_type: spec.analysis_type.clone(),
        version: spec.version,
        schema: serde_json::Value::Object(spec.schema.clone()),
        media_id_schema: serde_json::Value::Object(spec.media_id_schema.clone()),
        queryable: spec.queryable.clone(),
        timeline: spec.timeline.iter().map(timeline_spec).collect(),
        access,
    };
    Ok(CompiledDataStore::compile(wanted)
        .map_err(|e| spec_error(&e))?
        .spec)
}

fn status_from(
    input: &Input<'_>,
    record: Option<&MediaDataStoreRecord>,
    desired: &[Desired],
    now: Timestamp,
) -> MediaDataStoreStatus {
    let previous = input.status.map(|s| s.conditions.as_slice()).unwrap_or_default();
    MediaDataStoreStatus {
        observed_generation: Some(input.generation),
        store_name: record.map(|r| r.spec.name.clone()),
        version: record.map(|r| r.spec.version),
        conditions: conditions::merge(previous, desired, input.generation, now),
    }
}

/// The message of `Ready=True Accepted`.
fn accepted_message(record: &MediaDataStoreRecord, policy: DeletionPolicy) -> String {
    let on_delete = match policy {
        DeletionPolicy::Retain => "deleting the resource keeps it and its documents",
        DeletionPolicy::Delete => "deleting the resource deletes it and its documents",
    };
    format!(
        "DataStore {} version {} is in the metadata store; {on_delete}",
        record.spec.name, record.spec.version
    )
}

/// Plans one reconcile of a live MediaDataStore.
pub fn plan(input: &Input<'_>, observed: &Observed, now: Timestamp) -> Plan<Op, MediaDataStoreStatus> {
    let previous = input.status.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let stored = observed.record.as_ref();
    let wanted = match desired_datastore(input) {
        Ok(d) => d,
        Err(err) => {
            // Bad input changes nothing: the stored DataStore keeps serving its documents.
            return Plan {
                ops: Vec::new(),
                status: status_from(input, stored, &invalid_spec_conditions(&err), now),
                events: invalid_spec_event(previous, &err),
                requeue: None,
            };
        }
    };
    let Some(record) = stored else {
        let conds = [Desired::no(
            conditions::READY,
            reason::CREATING,
            format!("recording DataStore {}", wanted.name),
        )];
        let note = format!(
            "recorded DataStore {} ({} version {})",
            wanted.name, wanted.analysis_type, wanted.version
        );
        return Plan {
            ops: vec![Op::Put(Box::new(wanted))],
            status: status_from(input, None, &conds, now),
            events: vec![EventNote::normal("Created", "Create", note)],
            requeue: Some(Duration::ZERO),
        };
    };
    if !same_json(&record.spec.media_id_schema, &wanted.media_id_schema) {
        let message = format!(
            "DataStore {}: the media id schema cannot change, and the stored one differs from \
             spec.mediaIdSchema; nothing was changed (restore the stored media id schema, or \
             create a MediaDataStore of another name)",
            record.spec.name
        );
        let events = if previous_ready_reason(previous) == Some(reason::MEDIA_ID_SCHEMA_IMMUTABLE) {
            Vec::new()
        } else {
            vec![EventNote::warning(
                reason::MEDIA_ID_SCHEMA_IMMUTABLE,
                "Validate",
                message.clone(),
            )]
        };
        let conds = [Desired::no(
            conditions::READY,
            reason::MEDIA_ID_SCHEMA_IMMUTABLE,
            message,
        )];
        // The stored DataStore may go away (deleted through the store's API): look again.
        return Plan {
            ops: Vec::new(),
            status: status_from(input, Some(record), &conds, now),
            events,
            requeue: Some(RESYNC),
        };
    }
    if !same_datastore(&record.spec, &wanted) {
        let conds = [Desired::no(
            conditions::READY,
            reason::CREATING,
            format!("changing DataStore {}", wanted.name),
        )];
        let note = format!(
            "changing DataStore {} (version {} to {})",
            wanted.name, record.spec.version, wanted.version
        );
        return Plan {
            ops: vec![Op::Put(Box::new(wanted))],
            status: status_from(input, Some(record), &conds, now),
            events: vec![EventNote::normal("Updated", "Update", note)],
            requeue: Some(Duration::ZERO),
        };
    }
    let conds = [Desired::yes(
        conditions::READY,
        reason::ACCEPTED,
        accepted_message(record, input.spec.deletion_policy),
    )];
    // Back from a refusal or an invalid spec: say so once.
    let events = match previous_ready_reason(previous) {
        Some(r) if r != reason::ACCEPTED && r != reason::CREATING => vec![EventNote::normal(
            reason::ACCEPTED,
            "Reconcile",
            format!(
                "DataStore {} version {} accepted",
                record.spec.name, record.spec.version
            ),
        )],
        _ => Vec::new(),
    };
    Plan {
        ops: Vec::new(),
        status: status_from(input, Some(record), &conds, now),
        events,
        requeue: Some(RESYNC),
    }
}

/// What deleting the resource does without reading the store: nothing with `Retain`, so the
/// finalizer goes even while the store is down (a namespace being deleted is not held up by
/// an outage when nothing in the store has to change). `None` with `Delete`: the store must
/// be read and the DataStore removed before the finalizer may go.
pub fn cleanup_without_store(input: &Input<'_>) -> Option<Vec<Op>> {
    match input.spec.deletion_policy {
        DeletionPolicy::Retain => Some(Vec::new()),
        DeletionPolicy::Delete => None,
    }
}

/// Plans cleanup of a MediaDataStore being deleted: with `Delete`, remove the DataStore (and
/// its documents) when the store has one, whatever the spec says now (the store name comes
/// from the resource's namespace and name); nothing with `Retain`.
pub fn plan_cleanup(input: &Input<'_>, observed: &Observed) -> Vec<Op> {
    match (&observed.record, input.spec.deletion_policy) {
        (Some(record), DeletionPolicy::Delete) => vec![Op::Delete {
            name: record.spec.name.clone(),
        }],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::TimelineRegion;
    use serde_json::json;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).expect("valid test timestamp")
    }

    fn object(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        match v {
            serde_json::Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    fn shots() -> MediaDataStoreSpec {
        MediaDataStoreSpec {
            analysis_type: "shot-boundaries".into(),
            version: 1,
            schema: object(json!({
                "type": "object",
                "required": ["fps"],
                "properties": {"fps": {"type": "number"}, "shots": {"type": "array"}}
            })),
            media_id_schema: object(json!({"type": "object", "required": ["asset"]})),
            queryable: vec!["fps".into()],
            timeline: vec![TimelineCollection {
                path: "faces".into(),
                start: "t".into(),
                end: None,
                region: Some(TimelineRegion {
                    x: "box.x".into(),
                    y: "box.y".into(),
                    width: "box.w".into(),
                    height: "box.h".into(),
                }),
            }],
            readers: vec![Subject {
                kind: SubjectKind::Group,
                name: "review".into(),
                namespace: None,
            }],
            writers: vec![
                Subject {
                    kind: SubjectKind::ServiceAccount,
                    name: "analyser".into(),
                    namespace: None,
                },
                Subject {
                    kind: SubjectKind::ServiceAccount,
                    name: "ingest".into(),
                    namespace: Some("pipeline".into()),
                },
            ],
            admins: Vec::new(),
            deletion_policy: DeletionPolicy::Retain,
        }
    }

    fn input(spec: &MediaDataStoreSpec) -> Input<'_> {
        Input {
            namespace: "studio",
            name: "shots",
            generation: 2,
            spec,
            status: None,
        }
    }

    fn ready(status: &MediaDataStoreStatus) -> (String, String, String) {
        let c = conditions::find(&status.conditions, conditions::READY).expect("Ready");
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    #[test]
    fn the_spec_becomes_the_engine_spec_with_namespaced_name_and_subjects() {
        let spec = shots();
        let d = desired_datastore(&input(&spec)).expect("valid");
        assert_eq!(d.name, "studio/shots");
        assert_eq!(d.access.readers, ["Group:review"]);
        assert_eq!(
            d.access.writers,
            ["ServiceAccount:pipeline/ingest", "ServiceAccount:studio/analyser"],
            "a ServiceAccount without a namespace is the resource's; sorted"
        );
        assert_eq!(
            d.timeline[0].region.as_ref().map(|r| r.width.as_str()),
            Some("box.w")
        );
        assert_eq!(d.media_id_schema["required"], json!(["asset"]));
    }

    #[test]
    fn store_names_of_two_namespaces_never_meet() {
        assert_eq!(store_name("a", "b.c").as_deref(), Ok("a/b.c"));
        // Workspaces use '.', which a DataStore name may hold: '/' is what keeps them apart.
        assert_ne!(store_name("a.b", "c"), store_name("a", "b.c"));
        assert!(store_name("a", "b/c").is_err());
        assert!(store_name("", "b").is_err());
        assert!(store_name("ns", &"x".repeat(250)).is_ok(), "253 bytes in all");
        assert!(store_name("ns", &"x".repeat(251)).is_err());
        // The built-in technical-metadata DataStore is studiodrive/technical: never claimed.
        assert!(store_name("studiodrive", "technical").is_err());
        assert_eq!(
            store_name("studiodrive-system", "technical").as_deref(),
            Ok("studiodrive-system/technical")
        );
    }

    #[test]
    fn invalid_specs_change_nothing_and_name_the_field() {
        let cases: Vec<(MediaDataStoreSpec, &str)> = vec![
            (
                MediaDataStoreSpec {
                    queryable: vec!["fps".into(), "a..b".into()],
                    ..shots()
                },
                "spec.queryable[1]",
            ),
            (
                MediaDataStoreSpec {
                    queryable: vec!["fps".into(), "fps".into()],
                    ..shots()
                },
                "listed already at spec.queryable[0]",
            ),
            (
                MediaDataStoreSpec {
                    schema: object(json!({"type": "no-such-type"})),
                    ..shots()
                },
                "spec.schema: the document schema is invalid",
            ),
            (
                MediaDataStoreSpec {
                    media_id_schema: object(json!({"minLength": "three"})),
                    ..shots()
                },
                "spec.mediaIdSchema",
            ),
            (
                MediaDataStoreSpec {
                    admins: vec![Subject {
                        kind: SubjectKind::ServiceAccount,
                        name: "a/b".into(),
                        namespace: None,
                    }],
                    ..shots()
                },
                "spec.admins[0]: subject",
            ),
            (
                MediaDataStoreSpec {
                    readers: vec![
                        Subject {
                            kind: SubjectKind::User,
                            name: "alice".into(),
                            namespace: None,
                        },
                        Subject {
                            kind: SubjectKind::User,
                            name: "bob".into(),
                            namespace: Some("studio".into()),
                        },
                    ],
                    ..shots()
                },
                "spec.readers[1]: only ServiceAccount subjects have a namespace",
            ),
            (
                MediaDataStoreSpec {
                    timeline: vec![TimelineCollection {
                        path: "faces".into(),
                        start: "t".into(),
                        end: Some("".into()),
                        region: None,
                    }],
                    ..shots()
                },
                "spec.timeline[0].end",
            ),
            (
                MediaDataStoreSpec {
                    analysis_type: "shot boundaries".into(),
                    ..shots()
                },
                "spec.analysisType",
            ),
            (
                MediaDataStoreSpec {
                    version: 0,
                    ..shots()
                },
                "spec.version",
            ),
        ];
        let stored = MediaDataStoreRecord {
            id: "ds-1".into(),
            spec: desired_datastore(&input(&shots())).expect("valid"),
        };
        for (spec, says) in &cases {
            let p = plan(
                &input(spec),
                &Observed {
                    record: Some(stored.clone()),
                },
                at(10),
            );
            assert!(p.ops.is_empty(), "{says}: {:?}", p.ops);
            assert_eq!(p.requeue, None);
            let (status, why, message) = ready(&p.status);
            assert_eq!((status.as_str(), why.as_str()), ("False", "InvalidSpec"));
            assert!(message.contains(says), "{says:?} not in {message:?}");
            assert_eq!(p.status.version, Some(1), "the stored version is still reported");
            assert_eq!(p.events.len(), 1);
        }
    }

    #[test]
    fn a_new_datastore_is_put_then_accepted_and_a_change_is_put_again() {
        let spec = shots();
        let p = plan(&input(&spec), &Observed::default(), at(10));
        let [Op::Put(put)] = &p.ops[..] else {
            panic!("{:?}", p.ops)
        };
        assert_eq!(p.requeue, Some(Duration::ZERO));
        let stored = Observed {
            record: Some(MediaDataStoreRecord {
                id: "ds-1".into(),
                spec: (**put).clone(),
            }),
        };
        let settled = plan(&input(&spec), &stored, at(11));
        assert!(settled.ops.is_empty());
        assert_eq!(settled.requeue, Some(RESYNC));
        let (status, why, message) = ready(&settled.status);
        assert_eq!((status.as_str(), why.as_str()), ("True", "Accepted"));
        assert!(message.contains("keeps it and its documents"), "{message}");
        assert_eq!(settled.status.store_name.as_deref(), Some("studio/shots"));
        assert_eq!(settled.status.version, Some(1));
        assert_eq!(settled.status.observed_generation, Some(2));

        let mut newer = shots();
        newer.version = 2;
        newer.readers.push(Subject {
            kind: SubjectKind::User,
            name: "carol".into(),
            namespace: None,
        });
        let p = plan(&input(&newer), &stored, at(12));
        assert!(
            matches!(&p.ops[..], [Op::Put(d)] if d.version == 2),
            "{:?}",
            p.ops
        );
        assert_eq!(
            p.status.version,
            Some(1),
            "the store has version 1 until it accepts 2"
        );
        assert!(
            p.events[0].note.contains("version 1 to 2"),
            "{}",
            p.events[0].note
        );
    }

    #[test]
    fn numbers_spelled_otherwise_by_the_store_are_the_same_schema() {
        let mut spec = shots();
        spec.schema = object(json!({"type": "object", "properties": {"fps": {"maximum": 1e2}}}));
        let mut put = desired_datastore(&input(&spec)).expect("valid");
        // What JSONB gives back for 1e2.
        put.schema = json!({"type": "object", "properties": {"fps": {"maximum": 100}}});
        let observed = Observed {
            record: Some(MediaDataStoreRecord {
                id: "ds-1".into(),
                spec: put,
            }),
        };
        assert!(plan(&input(&spec), &observed, at(1)).ops.is_empty());
    }

    #[test]
    fn a_stored_media_id_schema_that_differs_is_refused_without_ops() {
        let spec = shots();
        let mut stored = desired_datastore(&input(&spec)).expect("valid");
        stored.media_id_schema = json!({"type": "string"});
        let observed = Observed {
            record: Some(MediaDataStoreRecord {
                id: "ds-1".into(),
                spec: stored,
            }),
        };
        let p = plan(&input(&spec), &observed, at(1));
        assert!(p.ops.is_empty());
        assert_eq!(p.requeue, Some(RESYNC));
        let (status, why, message) = ready(&p.status);
        assert_eq!(
            (status.as_str(), why.as_str()),
            ("False", "MediaIdSchemaImmutable")
        );
        assert!(message.contains("studio/shots"), "{message}");
        assert_eq!(p.events.len(), 1);
        assert!(p.events[0].warning);
        let mut again = input(&spec);
        again.status = Some(&p.status);
        assert!(plan(&again, &observed, at(2)).events.is_empty(), "one warning");
    }

    #[test]
    fn cleanup_deletes_only_with_delete_and_retain_needs_no_store() {
        let mut spec = shots();
        let record = MediaDataStoreRecord {
            id: "ds-1".into(),
            spec: desired_datastore(&input(&spec)).expect("valid"),
        };
        let observed = Observed { record: Some(record) };
        assert_eq!(cleanup_without_store(&input(&spec)), Some(Vec::new()));
        assert!(plan_cleanup(&input(&spec), &observed).is_empty());
        spec.deletion_policy = DeletionPolicy::Delete;
        assert_eq!(cleanup_without_store(&input(&spec)), None);
        // Even with a spec that no longer compiles: the name is the resource's.
        spec.queryable = vec!["a..b".into()];
        assert_eq!(
            plan_cleanup(&input(&spec), &observed),
            [Op::Delete {
                name: "studio/shots".into()
            }]
        );
        assert!(plan_cleanup(&input(&spec), &Observed::default()).is_empty());
    }

    #[test]
    fn a_resource_in_the_built_in_namespace_is_invalid_and_touches_nothing() {
        let spec = shots();
        let builtin = Input {
            namespace: BUILT_IN_PREFIX,
            name: "technical",
            ..input(&spec)
        };
        let p = plan(&builtin, &Observed::default(), at(1));
        assert!(p.ops.is_empty());
        let (status, why, message) = ready(&p.status);
        assert_eq!((status.as_str(), why.as_str()), ("False", "InvalidSpec"));
        assert!(message.contains("built-in"), "{message}");
    }
}
