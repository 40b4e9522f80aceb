//! Races against real PostgreSQL: SERIALIZABLE transactions with retry must leave exactly one
//! winner and never a cycle.

mod common;

use common::*;
use drive::ErrorKind;
use drive::model::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tasks_creating_one_name_have_exactly_one_winner() {
    let store = store().await;
    let ws = workspace(&store, "race-create", WorkspaceKind::User).await;
    let mut tasks = Vec::new();
    for i in 0..16u32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let node = NewNode::new(NodeKind::File, 0o644).owned_by(i, i);
            store
                .create(&actor(), ws.id, ws.root, &name("render.exr"), &node)
                .await
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(attr) => winners.push(attr),
            Err(e) => assert_eq!(e.kind(), ErrorKind::Exists, "loser error: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one create wins");
    let listed = store.readdir(View::Live, ws.root, None, 100).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].ino, winners[0].ino);
    let got = store
        .lookup(View::Live, ws.root, &name("render.exr"))
        .await
        .unwrap();
    assert_eq!(got.uid, winners[0].uid, "the stored node is the winner's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tasks_renaming_onto_one_name_keep_the_unique_path_invariant() {
    let store = store().await;
    let ws = workspace(&store, "race-rename", WorkspaceKind::User).await;
    let mut sources = Vec::new();
    for i in 0..12 {
        let a = store
            .create(
                &actor(),
                ws.id,
                ws.root,
                &name(&format!("tmp{i}")),
                &NewNode::new(NodeKind::File, 0o644),
            )
            .await
            .unwrap();
        sources.push((i, a.ino));
    }
    let mut tasks = Vec::new();
    for (i, _) in &sources {
        let store = store.clone();
        let i = *i;
        tasks.push(tokio::spawn(async move {
            store
                .rename(
                    &actor(),
                    ws.id,
                    ws.root,
                    &name(&format!("tmp{i}")),
                    ws.root,
                    &name("final"),
                    RenameMode::NoReplace,
                )
                .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(e) => assert_eq!(e.kind(), ErrorKind::Exists, "loser error: {e}"),
        }
    }
    assert_eq!(ok, 1, "exactly one NOREPLACE rename wins");
    let listed = store.readdir(View::Live, ws.root, None, 100).await.unwrap();
    let finals: Vec<_> = listed.iter().filter(|e| e.name.as_bytes() == b"final").collect();
    assert_eq!(finals.len(), 1);
    assert_eq!(listed.len(), 12, "11 sources remain plus the one renamed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rename_cycle_race_never_creates_a_loop() {
    let store = store().await;
    let ws = workspace(&store, "race-cycle", WorkspaceKind::User).await;
    for round in 0..10 {
        let a_name = name(&format!("a{round}"));
        let b_name = name(&format!("b{round}"));
        let a = store
            .create(
                &actor(),
                ws.id,
                ws.root,
                &a_name,
                &NewNode::new(NodeKind::Directory, 0o755),
            )
            .await
            .unwrap();
        let b = store
            .create(
                &actor(),
                ws.id,
                ws.root,
                &b_name,
                &NewNode::new(NodeKind::Directory, 0o755),
            )
            .await
            .unwrap();
        let (s1, s2) = (store.clone(), store.clone());
        let (an, bn, an2, bn2) = (a_name.clone(), b_name.clone(), a_name.clone(), b_name.clone());
        let t1 = tokio::spawn(async move {
            s1.rename(&actor(), ws.id, ws.root, &an, b.ino, &an2, RenameMode::Replace)
                .await
        });
        let t2 = tokio::spawn(async move {
            s2.rename(&actor(), ws.id, ws.root, &bn, a.ino, &bn2, RenameMode::Replace)
                .await
        });
        let r1 = t1.await.unwrap();
        let r2 = t2.await.unwrap();
        let oks = [r1.is_ok(), r2.is_ok()].iter().filter(|x| **x).count();
        assert_eq!(
            oks, 1,
            "exactly one of the crossing moves succeeds: {r1:?} {r2:?}"
        );
        for r in [r1, r2] {
            if let Err(e) = r {
                assert_eq!(
                    e.kind(),
                    ErrorKind::InvalidArgument,
                    "the loser sees the cycle: {e}"
                );
            }
        }
        // Both directories remain reachable from the root: no detached loop.
        let mut reachable = 0;
        let mut stack = vec![ws.root];
        while let Some(d) = stack.pop() {
            for e in store.readdir(View::Live, d, None, 1000).await.unwrap() {
                if e.ino == a.ino || e.ino == b.ino {
                    reachable += 1;
                }
                if e.kind == NodeKind::Directory {
                    stack.push(e.ino);
                }
            }
        }
        assert_eq!(
            reachable, 2,
            "round {round}: both folders reachable from the root"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readdir_pages_are_stable_under_concurrent_inserts() {
    let store = store().await;
    let ws = workspace(&store, "race-readdir", WorkspaceKind::User).await;
    for i in 0..200 {
        store
            .create(
                &actor(),
                ws.id,
                ws.root,
                &name(&format!("f{i:04}")),
                &NewNode::new(NodeKind::File, 0o644),
            )
            .await
            .unwrap();
    }
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                store
                    .create(
                        &actor(),
                        ws.id,
                        ws.root,
                        &name(&format!("g{i:04}")),
                        &NewNode::new(NodeKind::File, 0o644),
                    )
                    .await
                    .unwrap();
            }
        })
    };
    let mut seen = Vec::new();
    let mut after: Option<Name> = None;
    loop {
        let page = store
            .readdir(View::Live, ws.root, after.as_ref(), 7)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|e| e.name.clone());
        seen.extend(page.into_iter().map(|e| e.name.to_string_lossy()));
    }
    writer.await.unwrap();
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, seen, "pages are in order with no repeats");
    for i in 0..200 {
        assert!(
            seen.contains(&format!("f{i:04}")),
            "pre-existing entry f{i:04} was not skipped"
        );
    }
}
