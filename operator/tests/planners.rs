//! Planner behaviour through the store-only sync step over the in-memory store: tables of
//! cases, and properties (a second sync is a no-op; observedGeneration follows generation).

mod common;

use common::*;
use drive::data::{DataKey, Kek};
use operator::crd::conditions::{self, reason};
use operator::crd::{DeletionPolicy, WorkspaceKind};
use operator::keys::StaticKeySource;
use operator::plan::workspace::{Input, KeyState, Observed, Op, plan};
use operator::reconcile::{self, Backoff, ReconcileError, Workspaces};
use operator::store::memory::MemoryStore;
use operator::store::{StoreErrorKind, StudioStore, Usage};
use proptest::prelude::*;

fn input<'a>(w: &'a operator::crd::Workspace) -> Input<'a> {
    Input {
        namespace: w.metadata.namespace.as_deref().unwrap_or_default(),
        name: w.metadata.name.as_deref().unwrap_or_default(),
        generation: w.metadata.generation.unwrap_or_default(),
        spec: &w.spec,
        status: w.status.as_ref(),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn workspace_plans_cover_create_update_invalid_and_drift() {
    let w = workspace(
        "studio",
        "shot010",
        workspace_spec(WorkspaceKind::Team, DeletionPolicy::Retain),
    );
    let created = plan(&input(&w), &Observed::default(), at(100));
    assert!(
        matches!(&created.ops[..], [Op::Create(n)] if n.name == "studio.shot010" && n.block_size == 4 << 20)
    );
    assert_eq!(
        conditions::find(&created.status.conditions, "Ready").map(|c| c.reason.as_str()),
        Some(reason::CREATING)
    );

    let mut bad = w.clone();
    bad.metadata.name = Some("Bad_Name".into());
    let invalid = plan(&input(&bad), &Observed::default(), at(100));
    assert!(invalid.ops.is_empty());
    assert_eq!(invalid.requeue, None);
    let ready = conditions::find(&invalid.status.conditions, "Ready").expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "InvalidSpec")
    );
    assert_eq!(invalid.events.len(), 1, "one warning event on the transition");

    let mut tiny = w.clone();
    tiny.spec.block_size_bytes = 4096;
    assert_eq!(
        plan(&input(&tiny), &Observed::default(), at(1)).status.conditions[0].reason,
        "InvalidSpec"
    );
}

#[test]
fn second_sync_changes_nothing_and_mutable_edits_update() {
    rt().block_on(async {
        let store = MemoryStore::default();
        let mut w = workspace(
            "studio",
            "shot010",
            workspace_spec(WorkspaceKind::User, DeletionPolicy::Delete),
        );
        store.set_usage(
            "studio.shot010",
            Usage {
                files: 3,
                directories: 1,
                bytes: 42,
            },
        );
        let first = reconcile::sync(&Workspaces(NO_KEYS), &store, &input(&w), at(10))
            .await
            .expect("sync");
        assert!(
            conditions::is_true(&first.status.conditions, "Ready"),
            "{:?}",
            first.status.conditions
        );
        assert_eq!(first.status.usage.map(|u| u.bytes), Some(42));
        assert_eq!(
            first.events.iter().map(|e| e.reason).collect::<Vec<_>>(),
            ["Created"]
        );
        let writes = store.writes();
        w.status = Some(first.status.clone());
        let second = reconcile::sync(&Workspaces(NO_KEYS), &store, &input(&w), at(20))
            .await
            .expect("sync again");
        assert_eq!(store.writes(), writes, "an unchanged spec must not write");
        assert_eq!(
            second.status, first.status,
            "an unchanged spec must not change status"
        );
        assert!(second.events.is_empty());

        w.spec.quota_bytes = Some(2 << 30);
        w.metadata.generation = Some(2);
        let third = reconcile::sync(&Workspaces(NO_KEYS), &store, &input(&w), at(30))
            .await
            .expect("sync after edit");
        assert_eq!(
            store.workspace("studio.shot010").and_then(|r| r.quota_bytes),
            Some(2 << 30)
        );
        assert_eq!(third.status.observed_generation, Some(2));
        assert!(
            third
                .status
                .conditions
                .iter()
                .all(|c| c.observed_generation == Some(2))
        );
    });
}

#[test]
fn store_outage_fails_with_unavailable_and_cleanup_finishes_after_recovery() {
    rt().block_on(async {
        let store = MemoryStore::default();
        let w = workspace(
            "studio",
            "gone",
            workspace_spec(WorkspaceKind::User, DeletionPolicy::Delete),
        );
        reconcile::sync(&Workspaces(NO_KEYS), &store, &input(&w), at(1))
            .await
            .expect("create");
        store.set_available(false);
        let err = reconcile::sync(&Workspaces(NO_KEYS), &store, &input(&w), at(2))
            .await
            .expect_err("store is down");
        assert!(matches!(&err, ReconcileError::Store(e) if e.kind == StoreErrorKind::Unavailable));
        assert_eq!(err.label(), "store_unavailable");
        let cleanup = reconcile::cleanup(&Workspaces(NO_KEYS), &store, &input(&w)).await;
        assert!(
            cleanup.is_err(),
            "cleanup must fail (and keep the finalizer) while the store is down"
        );
        assert!(store.workspace("studio.gone").is_some());
        store.set_available(true);
        let ops = reconcile::cleanup(&Workspaces(NO_KEYS), &store, &input(&w))
            .await
            .expect("cleanup after recovery");
        assert_eq!(ops.len(), 1);
        assert!(store.get_workspace("studio.gone").await.expect("get").is_none());
    });
}

#[test]
fn retain_cleanup_keeps_the_workspace() {
    rt().block_on(async {
        let store = MemoryStore::default();
        let w = workspace(
            "studio",
            "keep",
            workspace_spec(WorkspaceKind::Project, DeletionPolicy::Retain),
        );
        reconcile::sync(&Workspaces(NO_KEYS), &store, &input(&w), at(1))
            .await
            .expect("create");
        assert!(
            reconcile::cleanup(&Workspaces(NO_KEYS), &store, &input(&w))
                .await
                .expect("cleanup")
                .is_empty()
        );
        assert!(store.workspace("studio.keep").is_some());
    });
}

#[test]
fn backoff_grows_exponentially_and_is_capped() {
    let delays: Vec<u64> = (1..=9).map(|n| Backoff::delay(n).as_secs()).collect();
    assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
    let b = Backoff::default();
    assert_eq!(b.fail("ns/a").as_secs(), 5);
    assert_eq!(b.fail("ns/a").as_secs(), 10);
    b.succeed("ns/a");
    assert_eq!(b.fail("ns/a").as_secs(), 5);
}

fn kinds() -> impl Strategy<Value = WorkspaceKind> {
    prop_oneof![
        Just(WorkspaceKind::User),
        Just(WorkspaceKind::Project),
        Just(WorkspaceKind::Team)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// For any spec (valid or not, encrypted with or without its key), syncing twice writes
    /// nothing the second time and yields the same status, with observedGeneration equal to
    /// metadata.generation.
    #[test]
    fn applying_a_plan_twice_is_a_no_op(
        name in "[a-z][a-z0-9-]{0,20}|[A-Z_/]{1,5}",
        kind in kinds(),
        block in prop_oneof![Just(4096u32), Just(1u32 << 20), Just(64u32 << 20), 1u32..(128 << 20)],
        quota in proptest::option::of(0u64..u64::MAX / 2),
        owners in proptest::collection::vec("[a-zA-Z:]{0,8}", 0..3),
        generation in 1i64..1000,
        delete in any::<bool>(),
        encrypt in any::<bool>(),
        key_in_secret in any::<bool>(),
    ) {
        rt().block_on(async {
            let store = MemoryStore::default();
            let mut spec = workspace_spec(kind, if delete { DeletionPolicy::Delete } else { DeletionPolicy::Retain });
            spec.block_size_bytes = block;
            spec.quota_bytes = quota;
            spec.owners = owners;
            if encrypt {
                spec.encryption = Some(operator::crd::Encryption {
                    enabled: true,
                    key_secret_ref: Some(operator::crd::SecretKeyRef { name: "kek".into(), key: "key".into() }),
                });
            }
            let keys = if key_in_secret {
                StaticKeySource::default().with("ns", "kek", "key", Kek::generate().to_hex())
            } else {
                StaticKeySource::default()
            };
            let mut w = workspace("ns", &name, spec);
            w.metadata.generation = Some(generation);
            let first = reconcile::sync(&Workspaces(&keys), &store, &input(&w), at(5)).await.expect("sync");
            prop_assert_eq!(first.status.observed_generation, Some(generation));
            w.status = Some(first.status.clone());
            let writes = store.writes();
            let second = reconcile::sync(&Workspaces(&keys), &store, &input(&w), at(6)).await.expect("sync");
            prop_assert_eq!(store.writes(), writes);
            prop_assert_eq!(second.status, first.status);
            Ok(())
        })?;
    }
}

fn encrypted_input_spec() -> operator::crd::WorkspaceSpec {
    let mut spec = workspace_spec(WorkspaceKind::Team, DeletionPolicy::Retain);
    spec.encryption = Some(operator::crd::Encryption {
        enabled: true,
        key_secret_ref: Some(operator::crd::SecretKeyRef {
            name: "kek".into(),
            key: "key".into(),
        }),
    });
    spec
}

#[test]
fn an_encrypted_workspace_is_created_only_once_its_key_is_loaded() {
    let w = workspace("studio", "vault", encrypted_input_spec());
    let cases = [
        (KeyState::NotLoaded, Some(reason::KEY_SECRET_MISSING)),
        (
            KeyState::Missing("Secret studio/kek does not exist".into()),
            Some(reason::KEY_SECRET_MISSING),
        ),
        (
            KeyState::Invalid("key \"key\" of Secret studio/kek: bad".into()),
            Some(reason::INVALID_KEY),
        ),
        (KeyState::Loaded, None),
    ];
    for (key, blocked) in cases {
        let observed = Observed {
            key: key.clone(),
            ..Observed::default()
        };
        let p = plan(&input(&w), &observed, at(10));
        match blocked {
            Some(why) => {
                assert!(p.ops.is_empty(), "{key:?}: nothing is created");
                let ready = conditions::find(&p.status.conditions, "Ready").expect("Ready");
                assert_eq!(
                    (ready.status.as_str(), ready.reason.as_str()),
                    ("False", why),
                    "{key:?}"
                );
                assert_eq!(p.requeue, Some(std::time::Duration::from_secs(30)), "{key:?}");
                assert!(
                    matches!(&p.events[..], [e] if e.warning && e.reason == why),
                    "{key:?}: {:?}",
                    p.events
                );
                assert_eq!(p.status.workspace_name, None);
            }
            None => {
                assert!(matches!(&p.ops[..], [Op::Create(n)] if n.encrypted && n.name == "studio.vault"));
            }
        }
    }

    // The warning event fires on the transition only.
    let first = plan(
        &input(&w),
        &Observed {
            key: KeyState::Missing("gone".into()),
            ..Observed::default()
        },
        at(10),
    );
    let mut waiting = w.clone();
    waiting.status = Some(first.status.clone());
    let again = plan(
        &input(&waiting),
        &Observed {
            key: KeyState::Missing("gone".into()),
            ..Observed::default()
        },
        at(20),
    );
    assert!(again.events.is_empty(), "{:?}", again.events);
    assert_eq!(again.status, first.status, "no status churn while waiting");
    let now_invalid = plan(
        &input(&waiting),
        &Observed {
            key: KeyState::Invalid("bad".into()),
            ..Observed::default()
        },
        at(30),
    );
    assert_eq!(now_invalid.events.len(), 1, "a new reason is a new transition");

    // An existing encrypted workspace does not need its key: the planner ignores KeyState.
    let existing = operator::store::WorkspaceRecord {
        id: "mem-1".into(),
        name: "studio.vault".into(),
        kind: WorkspaceKind::Team,
        block_size: 4 << 20,
        encrypted: true,
        quota_bytes: Some(1 << 30),
        owners: vec!["User:alice".into()],
        object_store: None,
    };
    let observed = Observed {
        record: Some(existing),
        usage: Some(Usage::default()),
        key: KeyState::NotLoaded,
    };
    let p = plan(&input(&w), &observed, at(40));
    assert!(p.ops.is_empty());
    assert!(conditions::is_true(&p.status.conditions, "Ready"));
}

#[test]
fn sync_wraps_a_new_data_key_under_the_secret_kek_in_the_memory_store() {
    rt().block_on(async {
        let store = MemoryStore::default();
        let w = workspace("studio", "vault", encrypted_input_spec());
        let missing = reconcile::sync(&Workspaces(NO_KEYS), &store, &input(&w), at(1))
            .await
            .expect("sync");
        assert_eq!(missing.status.conditions[0].reason, reason::KEY_SECRET_MISSING);
        assert_eq!(store.writes(), 0, "nothing is written without the key");

        let kek = Kek::generate();
        let keys = StaticKeySource::default().with("studio", "kek", "key", kek.to_hex());
        let created = reconcile::sync(&Workspaces(&keys), &store, &input(&w), at(2))
            .await
            .expect("sync");
        assert!(conditions::is_true(&created.status.conditions, "Ready"));
        assert!(store.workspace("studio.vault").is_some_and(|r| r.encrypted));
        let wrapped = store.wrapped_key("studio.vault").expect("wrapped key");
        DataKey::unwrap(&wrapped, &kek).expect("unwraps with the KEK");
    });
}
