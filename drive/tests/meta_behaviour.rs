//! Behaviour of the namespace operations against real PostgreSQL.

mod common;

use common::*;
use drive::ErrorKind;
use drive::model::*;

fn dir() -> NewNode {
    NewNode::new(NodeKind::Directory, 0o755)
}
fn file() -> NewNode {
    NewNode::new(NodeKind::File, 0o644)
}

#[tokio::test]
async fn invalid_names_are_refused_and_write_nothing() {
    let store = store().await;
    let ws = workspace(&store, "names", WorkspaceKind::User).await;
    let before = store.events_after(Some(ws.id), 0, 1000).await.unwrap().len();
    for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b", &[b'x'; 256][..]] {
        let err = Name::parse(bad).unwrap_err();
        let err = drive::MetaError::from(err);
        let expected = if bad.len() > 255 {
            ErrorKind::NameTooLong
        } else {
            ErrorKind::InvalidName
        };
        assert_eq!(err.kind(), expected, "{bad:?}");
    }
    for bad_path in ["/a/../b", "/./x", "/a\0"] {
        let e = store.resolve(ws.id, bad_path).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidName, "{bad_path}");
        let e = store.delete_path(&actor(), ws.id, bad_path).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidName, "{bad_path}");
    }
    let e = store
        .create_snapshot(&actor(), ws.id, "Bad/Name", "/")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidName);
    let e = store
        .create_workspace(
            &actor(),
            &WorkspaceSpec::new("x".repeat(254), WorkspaceKind::User),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NameTooLong);
    assert_eq!(
        store.events_after(Some(ws.id), 0, 1000).await.unwrap().len(),
        before,
        "nothing was written"
    );
    assert!(
        store
            .readdir(View::Live, ws.root, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn all_node_kinds_and_hard_links() {
    let store = store().await;
    let ws = workspace(&store, "kinds", WorkspaceKind::User).await;
    let a = actor();
    let f = store
        .create(&a, ws.id, ws.root, &name("f"), &file())
        .await
        .unwrap();
    let mut link = NewNode::new(NodeKind::Symlink, 0o777);
    link.symlink_target = Some(b"f".to_vec());
    let l = store.create(&a, ws.id, ws.root, &name("l"), &link).await.unwrap();
    assert_eq!(store.readlink(View::Live, l.ino).await.unwrap(), b"f");
    assert_eq!(l.size, 1);
    let fifo = store
        .create(
            &a,
            ws.id,
            ws.root,
            &name("p"),
            &NewNode::new(NodeKind::Fifo, 0o600),
        )
        .await
        .unwrap();
    assert_eq!(fifo.kind, NodeKind::Fifo);
    store
        .create(
            &a,
            ws.id,
            ws.root,
            &name("s"),
            &NewNode::new(NodeKind::Socket, 0o600),
        )
        .await
        .unwrap();
    let mut dev = NewNode::new(NodeKind::CharDevice, 0o600);
    dev.rdev = (1 << 8) | 3;
    let d = store
        .create(&a, ws.id, ws.root, &name("null"), &dev)
        .await
        .unwrap();
    assert_eq!(store.getattr(View::Live, d.ino).await.unwrap().rdev, (1 << 8) | 3);
    let e = store.readlink(View::Live, f.ino).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);

    let sub = store
        .create(&a, ws.id, ws.root, &name("sub"), &dir())
        .await
        .unwrap();
    let linked = store.link(&a, ws.id, f.ino, sub.ino, &name("f2")).await.unwrap();
    assert_eq!(linked.nlink, 2);
    assert_eq!(
        store.lookup(View::Live, sub.ino, &name("f2")).await.unwrap().ino,
        f.ino
    );
    store.unlink(&a, ws.id, ws.root, &name("f")).await.unwrap();
    let still = store.lookup(View::Live, sub.ino, &name("f2")).await.unwrap();
    assert_eq!(
        (still.ino, still.nlink),
        (f.ino, 1),
        "the other name keeps the node"
    );
    let e = store
        .link(&a, ws.id, sub.ino, ws.root, &name("dirlink"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    let root = store.getattr(View::Live, ws.root).await.unwrap();
    assert_eq!(root.nlink, 3, "root has one subdirectory");
}

#[tokio::test]
async fn posix_rename_rules() {
    let store = store().await;
    let ws = workspace(&store, "rename", WorkspaceKind::User).await;
    let a = actor();
    let r = ws.root;
    let d1 = store.create(&a, ws.id, r, &name("d1"), &dir()).await.unwrap();
    let d2 = store.create(&a, ws.id, r, &name("d2"), &dir()).await.unwrap();
    store
        .create(&a, ws.id, d2.ino, &name("x"), &file())
        .await
        .unwrap();
    let f = store.create(&a, ws.id, r, &name("f"), &file()).await.unwrap();
    let g = store.create(&a, ws.id, r, &name("g"), &file()).await.unwrap();
    let kind = |res: Result<(), drive::MetaError>| res.unwrap_err().kind();
    assert_eq!(
        kind(
            store
                .rename(&a, ws.id, r, &name("d1"), r, &name("d2"), RenameMode::Replace)
                .await
        ),
        ErrorKind::NotEmpty
    );
    assert_eq!(
        kind(
            store
                .rename(&a, ws.id, r, &name("f"), r, &name("d1"), RenameMode::Replace)
                .await
        ),
        ErrorKind::IsADirectory
    );
    assert_eq!(
        kind(
            store
                .rename(&a, ws.id, r, &name("d1"), r, &name("f"), RenameMode::Replace)
                .await
        ),
        ErrorKind::NotADirectory
    );
    assert_eq!(
        kind(
            store
                .rename(
                    &a,
                    ws.id,
                    r,
                    &name("d2"),
                    d2.ino,
                    &name("in"),
                    RenameMode::Replace
                )
                .await
        ),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(
            store
                .rename(&a, ws.id, r, &name("f"), r, &name("g"), RenameMode::NoReplace)
                .await
        ),
        ErrorKind::Exists
    );
    assert_eq!(
        kind(
            store
                .rename(&a, ws.id, r, &name("f"), r, &name("nope"), RenameMode::Exchange)
                .await
        ),
        ErrorKind::NotFound
    );
    store
        .rename(&a, ws.id, r, &name("f"), r, &name("g"), RenameMode::Exchange)
        .await
        .unwrap();
    assert_eq!(store.lookup(View::Live, r, &name("g")).await.unwrap().ino, f.ino);
    assert_eq!(store.lookup(View::Live, r, &name("f")).await.unwrap().ino, g.ino);
    store
        .rename(&a, ws.id, r, &name("f"), r, &name("g"), RenameMode::Replace)
        .await
        .unwrap();
    assert_eq!(
        store.lookup(View::Live, r, &name("g")).await.unwrap().ino,
        g.ino,
        "file replaced"
    );
    assert_eq!(
        kind(store.lookup(View::Live, r, &name("f")).await.map(|_| ())),
        ErrorKind::NotFound
    );
    // Replacing an empty directory works and fixes link counts.
    store
        .rename(&a, ws.id, r, &name("d2"), r, &name("d1"), RenameMode::Replace)
        .await
        .unwrap();
    assert_eq!(
        store.lookup(View::Live, r, &name("d1")).await.unwrap().ino,
        d2.ino
    );
    assert_eq!(store.getattr(View::Live, r).await.unwrap().nlink, 3);
    assert_eq!(
        store.getattr(View::Live, d1.ino).await.unwrap().nlink,
        0,
        "replaced directory is gone"
    );
}

#[tokio::test]
async fn moving_a_folder_touches_one_entry_and_subtree_delete_marks_only_its_root() {
    let store = store().await;
    let ws = workspace(&store, "move", WorkspaceKind::User).await;
    let a = actor();
    let shots = store
        .create(&a, ws.id, ws.root, &name("shots"), &dir())
        .await
        .unwrap();
    let mut leaf = shots.ino;
    for i in 0..20 {
        leaf = store
            .create(&a, ws.id, leaf, &name(&format!("l{i}")), &dir())
            .await
            .unwrap()
            .ino;
    }
    let archive = store
        .create(&a, ws.id, ws.root, &name("archive"), &dir())
        .await
        .unwrap();
    let before = store
        .events_after(Some(ws.id), 0, 10_000)
        .await
        .unwrap()
        .last()
        .unwrap()
        .id;
    store
        .rename(
            &a,
            ws.id,
            ws.root,
            &name("shots"),
            archive.ino,
            &name("shots"),
            RenameMode::Replace,
        )
        .await
        .unwrap();
    let events = store.events_after(Some(ws.id), before, 100).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].op.as_str(), events[0].ino),
        ("rename", Some(shots.ino))
    );
    let path = (0..20).map(|i| format!("l{i}")).collect::<Vec<_>>().join("/");
    assert_eq!(
        store
            .resolve(ws.id, &format!("/archive/shots/{path}"))
            .await
            .unwrap()
            .ino,
        leaf
    );

    store.delete_path(&a, ws.id, "/archive/shots").await.unwrap();
    let e = store.resolve(ws.id, "/archive/shots").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    // The descendants are untouched rows (O(1) delete); they are unreachable from the root.
    assert_eq!(store.getattr(View::Live, leaf).await.unwrap().nlink, 2);
    assert_eq!(store.usage(View::Live, ws.root).await.unwrap().directories, 1);
}

#[tokio::test]
async fn copy_shares_content_and_honours_merge_modes() {
    let store = store().await;
    let ws = workspace(&store, "copy", WorkspaceKind::User).await;
    let a = actor();
    let src = store
        .create(&a, ws.id, ws.root, &name("src"), &dir())
        .await
        .unwrap();
    let f = store
        .create(&a, ws.id, src.ino, &name("a.exr"), &file())
        .await
        .unwrap();
    store.register_block(&[7; 32], 10, 10).await.unwrap();
    let change = drive::meta::BlockChange {
        idx: 0,
        block: Some(([7; 32], 10)),
    };
    store
        .commit_content(
            &a,
            ws.id,
            f.ino,
            0,
            &[change],
            10,
            drive::ports::Clock::now(&drive::ports::SystemClock),
        )
        .await
        .unwrap();
    store
        .create(&a, ws.id, src.ino, &name("b.exr"), &file())
        .await
        .unwrap();
    let dst = store
        .create(&a, ws.id, ws.root, &name("dst"), &dir())
        .await
        .unwrap();
    let existing = store
        .create(&a, ws.id, dst.ino, &name("a.exr"), &file())
        .await
        .unwrap();

    let e = store
        .copy(
            &a,
            ws.id,
            View::Live,
            src.ino,
            ws.root,
            &name("dst"),
            MergeMode::Fail,
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Exists);
    let e = store
        .lookup(View::Live, dst.ino, &name("b.exr"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "a failed copy writes nothing");

    let r = store
        .copy(
            &a,
            ws.id,
            View::Live,
            src.ino,
            ws.root,
            &name("dst"),
            MergeMode::Skip,
        )
        .await
        .unwrap();
    assert_eq!((r.copied, r.skipped, r.replaced), (1, 1, 0));
    assert_eq!(
        store
            .lookup(View::Live, dst.ino, &name("a.exr"))
            .await
            .unwrap()
            .ino,
        existing.ino
    );

    let r = store
        .copy(
            &a,
            ws.id,
            View::Live,
            src.ino,
            ws.root,
            &name("dst"),
            MergeMode::Overwrite,
        )
        .await
        .unwrap();
    assert_eq!((r.replaced, r.skipped), (2, 0));
    let copied = store.lookup(View::Live, dst.ino, &name("a.exr")).await.unwrap();
    assert_ne!(copied.ino, f.ino);
    assert_eq!(copied.size, 10);
    let blocks = store.block_map(View::Live, copied.ino, 0, 10).await.unwrap();
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].hash, [7; 32], "the copy shares the block");
    let e = store
        .copy(
            &a,
            ws.id,
            View::Live,
            src.ino,
            src.ino,
            &name("inner"),
            MergeMode::Fail,
        )
        .await
        .unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::InvalidArgument,
        "no copy into its own subtree"
    );
}

#[tokio::test]
async fn project_workspaces_are_write_once() {
    project_files_are_write_once(store().await).await;
}

#[tokio::test]
async fn project_workspaces_are_write_once_in_memory() {
    project_files_are_write_once(drive::MemMetaStore::new()).await;
}

/// Catches: a store that lets a committed project file change (unlink, truncate, overwrite,
/// rename over it, exchange it), or lets two write sessions that both began on one empty file
/// both commit (the later one silently replacing the first).
async fn project_files_are_write_once<M: drive::MetaStore>(store: M) {
    let a = actor();
    let ws = store
        .create_workspace(&a, &WorkspaceSpec::new("proj", WorkspaceKind::Project))
        .await
        .unwrap();
    let create = |n: &'static str| {
        let store = store.clone();
        let a = a.clone();
        async move {
            store
                .create_in(&a, ws.id, ws.root, &name(n), &file())
                .await
                .unwrap()
                .0
        }
    };
    let commit = |ino: NodeId, base: u64, hash: [u8; 32]| {
        let store = store.clone();
        let a = a.clone();
        async move {
            store.register_block(&hash, 5, 5).await.unwrap();
            let change = drive::meta::BlockChange {
                idx: 0,
                block: Some((hash, 5)),
            };
            let now = drive::ports::Clock::now(&drive::ports::SystemClock);
            store
                .commit_content(&a, ws.id, ino, base, &[change], 5, now)
                .await
                .map(|_| ())
        }
    };

    // Two sessions began on one empty file (base version 0): the first commit wins, the
    // second is refused inside its transaction, and the file keeps the winner's block.
    let f = create("final.mov").await;
    commit(f.ino, 0, [1; 32]).await.unwrap();
    assert_denied(commit(f.ino, 0, [2; 32]).await, "second session");
    assert_denied(commit(f.ino, 1, [2; 32]).await, "a session on the committed file");
    let blocks = store.block_map(View::Live, f.ino, 0, 10).await.unwrap();
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].hash, [1; 32], "the winner's content");

    assert_denied(
        store
            .unlink(&a, ws.id, ws.root, &name("final.mov"))
            .await
            .map(drop),
        "unlink",
    );
    let resize = |size| SetAttr {
        size: Some(size),
        ..SetAttr::default()
    };
    for size in [0, 3, 9] {
        assert_denied(
            store.setattr(&a, ws.id, f.ino, &resize(size)).await.map(drop),
            &format!("resize to {size}"),
        );
    }
    store
        .setattr(&a, ws.id, f.ino, &resize(5))
        .await
        .expect("setting the size a committed file has changes nothing");
    let other = create("other.mov").await;
    for mode in [RenameMode::Replace, RenameMode::Exchange] {
        let renamed = store
            .rename(
                &a,
                ws.id,
                ws.root,
                &name("other.mov"),
                ws.root,
                &name("final.mov"),
                mode,
            )
            .await;
        assert_denied(renamed, &format!("{mode:?} onto the committed file"));
    }
    // Exchanging it with another file is refused from either side (moving it onto an empty
    // file, which replaces that one, is not a change of its content and stays allowed).
    let exchanged = store
        .rename(
            &a,
            ws.id,
            ws.root,
            &name("final.mov"),
            ws.root,
            &name("other.mov"),
            RenameMode::Exchange,
        )
        .await;
    assert_denied(exchanged, "exchange of the committed file");
    let at = |n: &'static str| {
        let store = store.clone();
        async move { store.lookup(View::Live, ws.root, &name(n)).await.unwrap() }
    };
    let (kept, moved) = (at("final.mov").await, at("other.mov").await);
    assert_eq!((kept.ino, kept.size), (f.ino, 5), "content and name intact");
    assert_eq!((moved.ino, moved.size), (other.ino, 0));
    // An empty file still takes its first content.
    commit(other.ino, 0, [3; 32]).await.unwrap();
}

fn assert_denied(result: Result<(), drive::MetaError>, what: &str) {
    match result {
        Ok(()) => panic!("{what}: allowed"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{what}: {e}"),
    }
}

#[tokio::test]
async fn snapshots_are_read_only_views_of_the_past() {
    let store = store().await;
    let ws = workspace(&store, "snaps", WorkspaceKind::User).await;
    let a = actor();
    let shots = store
        .create(&a, ws.id, ws.root, &name("shots"), &dir())
        .await
        .unwrap();
    let f = store
        .create(&a, ws.id, shots.ino, &name("a"), &file())
        .await
        .unwrap();
    let whole = store.create_snapshot(&a, ws.id, "before", "/").await.unwrap();
    let part = store
        .create_snapshot(&a, ws.id, "shots-only", "/shots")
        .await
        .unwrap();
    assert_eq!(part.root, shots.ino);
    store
        .setattr(
            &a,
            ws.id,
            f.ino,
            &SetAttr {
                mode: Some(0o600),
                ..SetAttr::default()
            },
        )
        .await
        .unwrap();
    store.unlink(&a, ws.id, shots.ino, &name("a")).await.unwrap();
    store
        .create(&a, ws.id, shots.ino, &name("b"), &file())
        .await
        .unwrap();
    let past = store
        .lookup(View::At(whole.epoch), shots.ino, &name("a"))
        .await
        .unwrap();
    assert_eq!(past.mode, 0o644, "the snapshot keeps the old attributes");
    assert_eq!(
        store
            .lookup(View::At(whole.epoch), shots.ino, &name("b"))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    let names: Vec<String> = store
        .readdir(View::At(part.epoch), part.root, None, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.name.to_string_lossy())
        .collect();
    assert_eq!(names, vec!["a"]);
    let listed: Vec<String> = store
        .list_snapshots(ws.id)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(listed, vec!["before", "shots-only"]);
    assert_eq!(
        store
            .create_snapshot(&a, ws.id, "before", "/")
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Exists
    );
    store.delete_snapshot(&a, ws.id, "before").await.unwrap();
    assert_eq!(
        store.get_snapshot(ws.id, "before").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(store.snapshot_usage(&part).await.unwrap().files, 1);
}

#[tokio::test]
async fn frame_sequences_are_kept_incrementally() {
    let store = store().await;
    let ws = workspace(&store, "seq", WorkspaceKind::User).await;
    let a = actor();
    let d = store
        .create(&a, ws.id, ws.root, &name("comp"), &dir())
        .await
        .unwrap();
    let mut names: Vec<String> = Vec::new();
    for frame in (1001..=1040).chain(1050..=1060) {
        let n = format!("shot010.{frame:04}.exr");
        store.create(&a, ws.id, d.ino, &name(&n), &file()).await.unwrap();
        names.push(n);
    }
    store
        .create(&a, ws.id, d.ino, &name("notes.txt"), &file())
        .await
        .unwrap();
    for frame in [1001, 1020, 1060] {
        let n = format!("shot010.{frame:04}.exr");
        store.unlink(&a, ws.id, d.ino, &name(&n)).await.unwrap();
        names.retain(|x| *x != n);
    }
    store
        .rename(
            &a,
            ws.id,
            d.ino,
            &name("shot010.1030.exr"),
            d.ino,
            &name("shot010.1045.exr"),
            RenameMode::Replace,
        )
        .await
        .unwrap();
    names.retain(|x| x != "shot010.1030.exr");
    names.push("shot010.1045.exr".into());
    let got = store.sequences(d.ino).await.unwrap();
    let expected = summarize(names.iter().map(String::as_bytes));
    assert_eq!(got, expected);
    assert_eq!(
        got[0].to_string(),
        "shot010.%04d.exr [1002-1019,1021-1029,1031-1040,1045,1050-1059]"
    );
    // Folded once; reading again, and after more changes, stays exact.
    assert_eq!(store.sequences(d.ino).await.unwrap(), expected);
    store
        .unlink(&a, ws.id, d.ino, &name("shot010.1045.exr"))
        .await
        .unwrap();
    store
        .create(&a, ws.id, d.ino, &name("shot010.1041.exr"), &file())
        .await
        .unwrap();
    store
        .create(&a, ws.id, d.ino, &name("plate.0001.dpx"), &file())
        .await
        .unwrap();
    let got = store.sequences(d.ino).await.unwrap();
    let text: Vec<String> = got.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        vec![
            "plate.%04d.dpx [1]",
            "shot010.%04d.exr [1002-1019,1021-1029,1031-1041,1050-1059]"
        ]
    );
}

#[tokio::test]
async fn events_follow_commit_order_through_the_feed() {
    let store = store().await;
    let ws = workspace(&store, "events", WorkspaceKind::User).await;
    let mut feed = drive::meta::EventFeed::from_now(&store, Some(ws.id))
        .await
        .unwrap();
    let a = Actor::uid(1000);
    let f = store
        .create(&a, ws.id, ws.root, &name("x"), &file())
        .await
        .unwrap();
    store
        .rename(
            &a,
            ws.id,
            ws.root,
            &name("x"),
            ws.root,
            &name("y"),
            RenameMode::Replace,
        )
        .await
        .unwrap();
    store.unlink(&a, ws.id, ws.root, &name("y")).await.unwrap();
    let got = feed.poll(&store).await.unwrap();
    let ops: Vec<(&str, Option<NodeId>, String)> = got
        .iter()
        .map(|e| (e.op.as_str(), e.ino, e.actor.clone()))
        .collect();
    assert_eq!(
        ops,
        vec![
            ("create", Some(f.ino), "uid:1000".into()),
            ("rename", Some(f.ino), "uid:1000".into()),
            ("unlink", Some(f.ino), "uid:1000".into())
        ]
    );
    // A rename names both entries, so followers can drop the old name at once.
    let moved = &got[1];
    assert_eq!(
        (moved.parent, moved.name.clone(), moved.from.clone()),
        (Some(ws.root), Some(name("y")), Some((ws.root, name("x"))))
    );
    assert_eq!(got[0].from, None);
    assert!(
        feed.poll(&store).await.unwrap().is_empty(),
        "each event is delivered once"
    );
}

#[tokio::test]
async fn workspaces_create_get_update_delete() {
    let store = store().await;
    let a = actor();
    let mut spec = WorkspaceSpec::new("team-comp", WorkspaceKind::Team);
    spec.block_size = 1 << 20;
    spec.owners = vec!["alice".into()];
    let ws = store.create_workspace(&a, &spec).await.unwrap();
    assert_eq!(
        store.create_workspace(&a, &spec).await.unwrap_err().kind(),
        ErrorKind::Exists
    );
    let got = store.get_workspace("team-comp").await.unwrap();
    assert_eq!(
        (got.id, got.kind, got.block_size, got.owners.clone()),
        (ws.id, WorkspaceKind::Team, 1 << 20, vec!["alice".to_string()])
    );
    let upd = drive::meta::WorkspaceUpdate {
        quota_bytes: Some(Some(1 << 40)),
        owners: None,
    };
    assert_eq!(
        store
            .update_workspace(&a, "team-comp", &upd)
            .await
            .unwrap()
            .quota_bytes,
        Some(1 << 40)
    );
    let mut bad = spec.clone();
    bad.name = "other".into();
    bad.block_size = 3;
    assert_eq!(
        store.create_workspace(&a, &bad).await.unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    store.delete_workspace(&a, "team-comp").await.unwrap();
    assert_eq!(
        store.get_workspace("team-comp").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(store.list_workspaces().await.unwrap().is_empty());
    store.create_workspace(&a, &spec).await.unwrap();
}

#[tokio::test]
async fn store_outage_gives_unavailable_and_recovers() {
    drive_testkit::init_tracing();
    let pg = drive_testkit::pg::PgServer::start().unwrap();
    let db = pg.create_database().await.unwrap();
    let mut config = drive::MetaConfig::new(pg.url(&db));
    config.connect_timeout = std::time::Duration::from_secs(2);
    let store = drive::PgMetaStore::connect(&config).await.unwrap();
    let ws = workspace(&store, "outage", WorkspaceKind::User).await;
    store
        .create(&actor(), ws.id, ws.root, &name("kept"), &file())
        .await
        .unwrap();
    pg.stop().unwrap();
    let e = store
        .create(&actor(), ws.id, ws.root, &name("lost"), &file())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.is_retryable());
    pg.resume().unwrap();
    let mut attempt = 0;
    let created = loop {
        attempt += 1;
        match store
            .create(&actor(), ws.id, ws.root, &name("after"), &file())
            .await
        {
            Ok(a) => break a,
            Err(e) if e.kind() == ErrorKind::Unavailable && attempt < 50 => continue,
            Err(e) => panic!("store did not recover: {e}"),
        }
    };
    assert_eq!(
        store
            .lookup(View::Live, ws.root, &name("after"))
            .await
            .unwrap()
            .ino,
        created.ino
    );
    assert!(store.lookup(View::Live, ws.root, &name("kept")).await.is_ok());
    assert_eq!(
        store
            .lookup(View::Live, ws.root, &name("lost"))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
}

#[tokio::test]
async fn tls_to_postgres_verifies_the_server_certificate() {
    drive_testkit::init_tracing();
    drive_testkit::install_crypto_provider();
    let ca =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let cert_pem = ca.cert.pem();
    let key_pem = ca.signing_key.serialize_pem();
    let pg = drive_testkit::pg::PgServer::start_with_tls(Some((&cert_pem, &key_pem))).unwrap();
    let db = pg.create_database().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &cert_pem).unwrap();

    let mut config = drive::MetaConfig::new(pg.tcp_url(&db));
    config.tls = drive::TlsMode::Require {
        ca_file: Some(ca_file),
    };
    let store = drive::PgMetaStore::connect(&config)
        .await
        .expect("TLS connection with the right CA");
    let ws = workspace(&store, "over-tls", WorkspaceKind::User).await;
    assert_eq!(store.get_workspace("over-tls").await.unwrap().id, ws.id);

    // A different CA must be refused: the connection is verified, not just encrypted.
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let other_file = dir.path().join("other.pem");
    std::fs::write(&other_file, other.cert.pem()).unwrap();
    config.tls = drive::TlsMode::Require {
        ca_file: Some(other_file),
    };
    config.connect_timeout = std::time::Duration::from_secs(3);
    let e = drive::PgMetaStore::connect(&config).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
}

#[tokio::test]
async fn volumes_are_provisioned_idempotently_by_name() {
    use drive::meta::{VolumePlacement, VolumeRequest};
    let store = store().await;
    let a = actor();
    let ws = workspace(&store, "default", WorkspaceKind::User).await;
    let mut params = std::collections::BTreeMap::new();
    params.insert("workspace".to_string(), "default".to_string());
    let req = VolumeRequest {
        name: "pvc-1234".into(),
        placement: VolumePlacement::Folder {
            workspace: "default".into(),
            base_path: "/volumes".into(),
        },
        capacity_bytes: 1 << 30,
        parameters: params.clone(),
    };
    let v = store.create_volume(&a, &req).await.unwrap();
    assert_eq!(
        (v.path.as_str(), v.workspace, v.whole_workspace),
        ("/volumes/pvc-1234", ws.id, false)
    );
    let again = store.create_volume(&a, &req).await.unwrap();
    assert_eq!(again, v, "the same request returns the same volume");
    assert_eq!(
        store.resolve(ws.id, "/volumes/pvc-1234").await.unwrap().kind,
        NodeKind::Directory
    );
    let mut bigger = req.clone();
    bigger.capacity_bytes = 2 << 30;
    assert_eq!(
        store.create_volume(&a, &bigger).await.unwrap_err().kind(),
        ErrorKind::Exists
    );

    let own = VolumeRequest {
        name: "pvc-own".into(),
        placement: VolumePlacement::Workspace {
            kind: WorkspaceKind::Team,
            block_size: 1 << 20,
        },
        capacity_bytes: 0,
        parameters: params,
    };
    let v2 = store.create_volume(&a, &own).await.unwrap();
    assert!(v2.whole_workspace);
    assert_eq!(
        store.get_workspace("pvc-own").await.unwrap().kind,
        WorkspaceKind::Team
    );
    assert_eq!(store.list_volumes().await.unwrap().len(), 2);

    assert!(store.delete_volume(&a, "pvc-1234").await.unwrap());
    assert!(
        !store.delete_volume(&a, "pvc-1234").await.unwrap(),
        "deleting twice succeeds"
    );
    assert_eq!(
        store
            .resolve(ws.id, "/volumes/pvc-1234")
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    assert!(store.delete_volume(&a, "pvc-own").await.unwrap());
    assert_eq!(
        store.get_workspace("pvc-own").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    // Any CSI name is a name: stored under a safe folder name, called by a safe id.
    let odd = store
        .create_volume(
            &a,
            &VolumeRequest {
                name: "Bad Name/..".into(),
                ..req.clone()
            },
        )
        .await
        .unwrap();
    assert!(drive::meta::is_safe_id(&odd.id) && odd.id != odd.name, "{odd:?}");
    assert!(odd.path.starts_with("/volumes/bad-name-"), "{odd:?}");
    assert_eq!(store.get_volume(&odd.id).await.unwrap().name, "Bad Name/..");
    let e = store
        .create_volume(
            &a,
            &VolumeRequest {
                name: String::new(),
                ..req
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrations_are_safe_when_several_processes_start_at_once() {
    drive_testkit::init_tracing();
    let pg = drive_testkit::pg::PgServer::shared();
    let db = pg.create_database().await.unwrap();
    let url = pg.url(&db);
    let starts: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { drive::PgMetaStore::connect(&drive::MetaConfig::new(url)).await })
        })
        .collect();
    let mut stores = Vec::new();
    for s in starts {
        stores.push(s.await.unwrap().expect("every concurrent start succeeds"));
    }
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let versions: Vec<i64> = client
        .query("SELECT version FROM schema_migrations ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // One version per migration file (numbered by its name's prefix), each once.
    let mut files: Vec<i64> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".sql")?.split('_').next()?.parse().ok()
        })
        .collect();
    files.sort_unstable();
    assert_eq!(versions, files, "each migration applied once");
    let ws = workspace(&stores[0], "after-migrate", WorkspaceKind::User).await;
    assert_eq!(stores[5].get_workspace("after-migrate").await.unwrap().id, ws.id);
    // Starting again on a migrated database changes nothing.
    drive::PgMetaStore::connect(&drive::MetaConfig::new(url))
        .await
        .unwrap();
}

#[tokio::test]
async fn gc_sees_only_blocks_that_nothing_references() {
    let store = store().await;
    let ws = workspace(&store, "gc", WorkspaceKind::User).await;
    let a = actor();
    let f = store
        .create(&a, ws.id, ws.root, &name("f"), &file())
        .await
        .unwrap();
    for h in [[1u8; 32], [2; 32], [3; 32]] {
        store.register_block(&h, 4, 4).await.unwrap();
    }
    let commit = |h: [u8; 32]| drive::meta::BlockChange {
        idx: 0,
        block: Some((h, 4)),
    };
    store
        .commit_content(
            &a,
            ws.id,
            f.ino,
            0,
            &[commit([1; 32])],
            4,
            drive::ports::Clock::now(&drive::ports::SystemClock),
        )
        .await
        .unwrap();
    store.create_snapshot(&a, ws.id, "keep", "/").await.unwrap();
    store
        .commit_content(
            &a,
            ws.id,
            f.ino,
            1,
            &[commit([2; 32])],
            4,
            drive::ports::Clock::now(&drive::ports::SystemClock),
        )
        .await
        .unwrap();
    // [1] is kept by the snapshot, [2] is live, [3] was never committed.
    let zero = std::time::Duration::ZERO;
    assert_eq!(
        store.unreferenced_blocks(zero, 100).await.unwrap(),
        vec![[3u8; 32]]
    );
    assert!(
        store
            .unreferenced_blocks(std::time::Duration::from_secs(3600), 100)
            .await
            .unwrap()
            .is_empty(),
        "grace protects fresh uploads"
    );
    assert!(
        !store.forget_block(&[1; 32]).await.unwrap(),
        "a referenced block is never forgotten"
    );
    assert!(store.forget_block(&[3; 32]).await.unwrap());
    assert!(store.block(&[3; 32]).await.unwrap().is_none());
    // A block that was never registered cannot be committed.
    let e = store
        .commit_content(
            &a,
            ws.id,
            f.ino,
            2,
            &[commit([10; 32])],
            4,
            drive::ports::Clock::now(&drive::ports::SystemClock),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    // A registered block becomes available with the commit that references it, and a second
    // registration of it then reports it as stored (dedup).
    store.register_block(&[11; 32], 4, 4).await.unwrap();
    let state = |h: [u8; 32]| {
        let store = store.clone();
        async move { store.block(&h).await.unwrap().map(|b| b.state) }
    };
    assert_eq!(state([11; 32]).await, Some(drive::meta::BlockState::Created));
    assert!(
        !store.register_block(&[11; 32], 4, 4).await.unwrap(),
        "not stored yet"
    );
    store
        .commit_content(
            &a,
            ws.id,
            f.ino,
            2,
            &[commit([11; 32])],
            4,
            drive::ports::Clock::now(&drive::ports::SystemClock),
        )
        .await
        .unwrap();
    assert_eq!(state([11; 32]).await, Some(drive::meta::BlockState::Available));
    assert!(
        store.register_block(&[11; 32], 4, 4).await.unwrap(),
        "stored: skip the upload"
    );
}

#[tokio::test]
async fn a_batch_of_unlinks_removes_what_it_may_and_reports_the_rest() {
    let store = store().await;
    let ws = workspace(&store, "batch", WorkspaceKind::User).await;
    let a = actor();
    let r = ws.root;
    let f = store.create(&a, ws.id, r, &name("f"), &file()).await.unwrap();
    store.link(&a, ws.id, f.ino, r, &name("f2")).await.unwrap();
    let g = store.create(&a, ws.id, r, &name("g"), &file()).await.unwrap();
    let d = store.create(&a, ws.id, r, &name("d"), &dir()).await.unwrap();
    let other = store.create(&a, ws.id, r, &name("other"), &file()).await.unwrap();
    let item = |n: &str, ino: NodeId| drive::meta::QueuedUnlink {
        parent: r,
        name: name(n),
        ino,
        actor: a.clone(),
    };
    let items = [
        item("f", f.ino),
        item("f2", f.ino),      // the second name of the same node
        item("g", other.ino),   // the name holds another node than expected
        item("d", d.ino),       // a directory
        item("missing", g.ino), // no such name
    ];
    let out = store.unlink_many(ws.id, &items).await.unwrap();
    let kinds: Vec<Option<ErrorKind>> = out
        .iter()
        .map(|o| o.as_ref().err().map(drive::MetaError::kind))
        .collect();
    assert_eq!(
        kinds,
        vec![
            None,
            None,
            Some(ErrorKind::Conflict),
            Some(ErrorKind::IsADirectory),
            Some(ErrorKind::NotFound)
        ]
    );
    let names: Vec<String> = store
        .readdir(View::Live, r, None, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.name.to_string_lossy())
        .collect();
    assert_eq!(names, vec!["d", "g", "other"]);
    // Both names went in one transaction: the node has no links left, not one.
    assert_eq!(store.getattr(View::Live, f.ino).await.unwrap().nlink, 0);
    let dir_attr = out[0].as_ref().unwrap();
    assert_eq!(dir_attr, &store.getattr(View::Live, r).await.unwrap());
    let events = store.events_after(Some(ws.id), 0, 1000).await.unwrap();
    let unlinked: Vec<String> = events
        .iter()
        .filter(|e| e.op == "unlink")
        .filter_map(|e| e.name.as_ref().map(Name::to_string_lossy))
        .collect();
    assert_eq!(unlinked, vec!["f", "f2"]);
}
