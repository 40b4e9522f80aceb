//! Publish and revert (issue 19 item 3) against real PostgreSQL: publish puts a whole
//! folder in place with a snapshot and one event, concurrent readers never see part of it,
//! and revert gives back exactly the snapshot's tree (compared file by file) while writing
//! only rows that changed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::*;
use drive::ErrorKind;
use drive::PgMetaStore;
use drive::meta::{BlockChange, InitialContent, PublishMode, PublishOptions, RevertTarget};
use drive::model::*;
use rand::{Rng, SeedableRng};

fn dir() -> NewNode {
    NewNode::new(NodeKind::Directory, 0o755)
}

fn now() -> Timestamp {
    drive::ports::Clock::now(&drive::ports::SystemClock)
}

/// A block hash standing for content `tag` (blocks are content-addressed: equal hashes are
/// equal bytes).
fn hash(tag: u64) -> [u8; 32] {
    let mut h = [0u8; 32];
    h[..8].copy_from_slice(&tag.to_le_bytes());
    h[31] = 1;
    h
}

/// Creates file `name` in `parent` with one block of content `tag` (`len` bytes).
async fn write_file(
    store: &PgMetaStore,
    ws: &Workspace,
    parent: NodeId,
    name: &str,
    tag: u64,
) -> Result<Attr, drive::MetaError> {
    let len = 1 + tag % 4000;
    store.register_block(&hash(tag), len, len).await?;
    let ino = store.reserve_node_id().await?;
    let blocks = [(0, hash(tag), len)];
    let content = InitialContent {
        blocks: &blocks,
        size: len,
        mtime: now(),
    };
    let node = NewNode::new(NodeKind::File, 0o644);
    Ok(store
        .create_file(
            &actor(),
            ws.id,
            parent,
            &common::name(name),
            &node,
            ino,
            Some(&content),
        )
        .await?
        .0)
}

/// Replaces the content of file `ino` with content `tag`.
async fn overwrite(
    store: &PgMetaStore,
    ws: &Workspace,
    ino: NodeId,
    tag: u64,
) -> Result<Attr, drive::MetaError> {
    let attr = store.getattr(View::Live, ino).await?;
    let len = 1 + tag % 4000;
    store.register_block(&hash(tag), len, len).await?;
    let change = BlockChange {
        idx: 0,
        block: Some((hash(tag), len)),
    };
    store
        .commit_content(&actor(), ws.id, ino, attr.content_version, &[change], len, now())
        .await
}

/// What the comparisons look at for one node (not its number, ctime or content version).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    kind: NodeKind,
    mode: u32,
    uid: u32,
    size: u64,
    nlink: u32,
    mtime: Timestamp,
    blocks: Vec<FileBlock>,
    target: Option<Vec<u8>>,
}

use drive::meta::FileBlock;

/// The tree below `root` in `view`, by path, file by file.
async fn tree(store: &PgMetaStore, view: View, root: NodeId) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(root, String::new())];
    while let Some((d, prefix)) = stack.pop() {
        for e in store.readdir_plus(view, d, None, 100_000).await.expect("readdir") {
            let path = format!("{prefix}/{}", e.entry.name.to_string_lossy());
            let a = e.attr;
            let blocks = if a.kind == NodeKind::File {
                store
                    .block_map(view, a.ino, 0, u64::MAX / 2)
                    .await
                    .expect("block map")
            } else {
                Vec::new()
            };
            let target = if a.kind == NodeKind::Symlink {
                Some(store.readlink(view, a.ino).await.expect("readlink"))
            } else {
                None
            };
            if a.kind == NodeKind::Directory {
                stack.push((a.ino, path.clone()));
            }
            out.insert(
                path,
                Node {
                    kind: a.kind,
                    mode: a.mode,
                    uid: a.uid,
                    size: a.size,
                    nlink: a.nlink,
                    mtime: a.mtime,
                    blocks,
                    target,
                },
            );
        }
    }
    out
}

async fn mkdir(store: &PgMetaStore, ws: &Workspace, parent: NodeId, n: &str) -> Attr {
    store
        .create(&actor(), ws.id, parent, &name(n), &dir())
        .await
        .expect("mkdir")
}

async fn events_named(store: &PgMetaStore, ws: &Workspace, op: &str) -> Vec<Event> {
    store
        .events_after(Some(ws.id), 0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.op == op)
        .collect()
}

/// /work/shot with a small tree: files, a sub-folder, a symlink.
async fn finished_folder(store: &PgMetaStore, ws: &Workspace) -> (Attr, Attr) {
    let work = mkdir(store, ws, ws.root, "work").await;
    let shot = mkdir(store, ws, work.ino, "shot").await;
    for i in 0..5 {
        write_file(store, ws, shot.ino, &format!("f{i}.0001.exr"), 100 + i)
            .await
            .unwrap();
    }
    let sub = mkdir(store, ws, shot.ino, "sub").await;
    write_file(store, ws, sub.ino, "deep.txt", 7).await.unwrap();
    let mut link = NewNode::new(NodeKind::Symlink, 0o777);
    link.symlink_target = Some(b"sub/deep.txt".to_vec());
    store
        .create(&actor(), ws.id, shot.ino, &name("l"), &link)
        .await
        .unwrap();
    (work, shot)
}

fn options(mode: PublishMode, snapshot: &str, merge: MergeMode) -> PublishOptions {
    PublishOptions {
        mode,
        snapshot: snapshot.into(),
        merge,
    }
}

#[tokio::test]
async fn publish_by_move_puts_the_tree_in_place_with_its_snapshot_and_one_event() {
    let store = store().await;
    let ws = workspace(&store, "pub-move", WorkspaceKind::Team).await;
    let (_, shot) = finished_folder(&store, &ws).await;
    let published = mkdir(&store, &ws, ws.root, "published").await;
    let before = tree(&store, View::Live, shot.ino).await;
    let report = store
        .publish(
            &actor(),
            ws.id,
            "/work/shot",
            "/published/shot-v1",
            &options(PublishMode::Move, "shot-v1", MergeMode::Fail),
        )
        .await
        .unwrap();
    assert!(report.renamed);
    assert_eq!(report.root, shot.ino, "a move keeps the node");
    let dest = store.resolve(ws.id, "/published/shot-v1").await.unwrap();
    assert_eq!(tree(&store, View::Live, dest.ino).await, before);
    assert_eq!(
        store.resolve(ws.id, "/work/shot").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let snap = store.get_snapshot(ws.id, "shot-v1").await.unwrap();
    assert_eq!(snap, report.snapshot);
    assert_eq!(snap.path, "/published/shot-v1");
    assert_eq!(
        tree(&store, View::At(snap.epoch), snap.root).await,
        before,
        "the snapshot shows exactly it"
    );
    let events = events_named(&store, &ws, "published").await;
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e.snapshot.as_deref(), Some("shot-v1"));
    assert_eq!(e.epoch, Some(snap.epoch));
    assert_eq!(e.ino, Some(shot.ino));
    assert_eq!(
        (e.parent, e.name.clone()),
        (Some(published.ino), Some(name("shot-v1")))
    );
    assert_eq!(e.from.as_ref().map(|f| f.1.clone()), Some(name("shot")));
    // Nothing else was recorded by the publish's transaction.
    let all = store.events_after(Some(ws.id), 0, 10_000).await.unwrap();
    assert_eq!(all.last().map(|l| l.op.as_str()), Some("published"));
    // Later changes do not reach the snapshot.
    write_file(&store, &ws, dest.ino, "late.exr", 9).await.unwrap();
    assert_eq!(tree(&store, View::At(snap.epoch), snap.root).await, before);
    assert_eq!(store.workspace_usage(ws.id).await.unwrap().nodes, 12);
}

#[tokio::test]
async fn publish_by_copy_shares_blocks_and_keeps_the_source() {
    let store = store().await;
    let ws = workspace(&store, "pub-copy", WorkspaceKind::Team).await;
    let (_, shot) = finished_folder(&store, &ws).await;
    mkdir(&store, &ws, ws.root, "published").await;
    let before = tree(&store, View::Live, shot.ino).await;
    let usage = store.workspace_usage(ws.id).await.unwrap();
    let report = store
        .publish(
            &actor(),
            ws.id,
            "work/shot",
            "published/v1",
            &options(PublishMode::Copy, "v1", MergeMode::Fail),
        )
        .await
        .unwrap();
    assert!(!report.renamed);
    assert_ne!(report.root, shot.ino);
    assert_eq!(report.copy.as_ref().map(|c| c.copied), Some(9));
    let mut copied = tree(&store, View::Live, report.root).await;
    let mut source = tree(&store, View::Live, shot.ino).await;
    assert_eq!(source, before, "the source is intact");
    // A copy gets new times for its folders and symlinks; files keep mtime and the very same
    // blocks.
    for t in [&mut copied, &mut source] {
        for n in t.values_mut() {
            if n.kind != NodeKind::File {
                n.mtime = Timestamp(0);
            }
        }
    }
    assert_eq!(copied, source);
    let snap = store.get_snapshot(ws.id, "v1").await.unwrap();
    assert_eq!(snap.root, report.root);
    assert_eq!(
        tree(&store, View::At(snap.epoch), snap.root).await,
        tree(&store, View::Live, report.root).await
    );
    let events = events_named(&store, &ws, "published").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].snapshot.as_deref(), Some("v1"));
    assert!(events[0].from.is_none());
    assert!(
        events_named(&store, &ws, "copy").await.is_empty(),
        "the copy records no event of its own"
    );
    let after = store.workspace_usage(ws.id).await.unwrap();
    assert_eq!(after.nodes, usage.nodes + 9, "the copies are charged");
    assert_eq!(after.bytes, usage.bytes * 2);
}

#[tokio::test]
async fn publish_refuses_bad_input_with_a_typed_error_and_changes_nothing() {
    let store = store().await;
    let ws = workspace(&store, "pub-bad", WorkspaceKind::Team).await;
    let (work, _) = finished_folder(&store, &ws).await;
    let taken = mkdir(&store, &ws, ws.root, "taken").await;
    write_file(&store, &ws, taken.ino, "old.exr", 3).await.unwrap();
    write_file(&store, &ws, ws.root, "plain", 4).await.unwrap();
    store
        .create_snapshot(&actor(), ws.id, "existing", "/")
        .await
        .unwrap();
    let whole = tree(&store, View::Live, ws.root).await;
    let events = store.events_after(Some(ws.id), 0, 10_000).await.unwrap().len();
    let epoch = store.get_workspace("pub-bad").await.unwrap().epoch;
    let cases: Vec<(&str, &str, &str, PublishMode, ErrorKind)> = vec![
        (
            "/work/shot",
            "/work/shot/inside",
            "a",
            PublishMode::Move,
            ErrorKind::InvalidArgument,
        ),
        (
            "/work/shot",
            "/work/shot",
            "a",
            PublishMode::Copy,
            ErrorKind::InvalidArgument,
        ),
        (
            "/work/shot",
            "/work",
            "a",
            PublishMode::Copy,
            ErrorKind::InvalidArgument,
        ),
        ("/", "/x", "a", PublishMode::Move, ErrorKind::InvalidArgument),
        (
            "/work/shot",
            "/",
            "a",
            PublishMode::Move,
            ErrorKind::InvalidArgument,
        ),
        ("/work/missing", "/x", "a", PublishMode::Move, ErrorKind::NotFound),
        (
            "/work/shot",
            "/nowhere/x",
            "a",
            PublishMode::Copy,
            ErrorKind::NotFound,
        ),
        ("/plain", "/x", "a", PublishMode::Move, ErrorKind::NotADirectory),
        ("/work/shot", "/taken", "a", PublishMode::Move, ErrorKind::Exists),
        ("/work/shot", "/taken", "a", PublishMode::Copy, ErrorKind::Exists),
        (
            "/work/shot",
            "/x",
            "existing",
            PublishMode::Move,
            ErrorKind::Exists,
        ),
        (
            "/work/shot",
            "/x",
            "Bad Name",
            PublishMode::Move,
            ErrorKind::InvalidName,
        ),
        (
            "/work/../shot",
            "/x",
            "a",
            PublishMode::Move,
            ErrorKind::InvalidName,
        ),
        (
            "/work/shot",
            "/x/..",
            "a",
            PublishMode::Copy,
            ErrorKind::InvalidName,
        ),
    ];
    for (src, dest, snap, mode, want) in cases {
        let e = store
            .publish(&actor(), ws.id, src, dest, &options(mode, snap, MergeMode::Fail))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), want, "{src} -> {dest} ({snap}): {e}");
    }
    assert_eq!(
        tree(&store, View::Live, ws.root).await,
        whole,
        "the tree is unchanged"
    );
    assert_eq!(
        store.events_after(Some(ws.id), 0, 10_000).await.unwrap().len(),
        events
    );
    assert_eq!(store.get_workspace("pub-bad").await.unwrap().epoch, epoch);
    assert_eq!(store.list_snapshots(ws.id).await.unwrap().len(), 1);
    let _ = work;
}

#[tokio::test]
async fn publish_merges_into_an_existing_destination_when_asked() {
    let store = store().await;
    let ws = workspace(&store, "pub-merge", WorkspaceKind::Team).await;
    let (_, shot) = finished_folder(&store, &ws).await;
    let dest = mkdir(&store, &ws, ws.root, "dest").await;
    let kept = write_file(&store, &ws, dest.ino, "f0.0001.exr", 999)
        .await
        .unwrap();
    write_file(&store, &ws, dest.ino, "other.exr", 998).await.unwrap();
    let report = store
        .publish(
            &actor(),
            ws.id,
            "/work/shot",
            "/dest",
            &options(PublishMode::Move, "merged", MergeMode::Skip),
        )
        .await
        .unwrap();
    assert_eq!(report.root, dest.ino);
    assert_eq!(report.copy.as_ref().map(|c| c.skipped), Some(1));
    assert_eq!(
        store.resolve(ws.id, "/work/shot").await.unwrap_err().kind(),
        ErrorKind::NotFound,
        "moved: the source went to the trash"
    );
    assert!(
        store
            .trash_list(ws.id, None, 10)
            .await
            .unwrap()
            .iter()
            .any(|t| t.ino == shot.ino)
    );
    let live = tree(&store, View::Live, dest.ino).await;
    assert_eq!(
        live["/f0.0001.exr"].blocks[0].hash,
        hash(999),
        "skip kept the existing file"
    );
    assert!(live.contains_key("/other.exr") && live.contains_key("/sub/deep.txt"));
    let _ = kept;
    let snap = store.get_snapshot(ws.id, "merged").await.unwrap();
    assert_eq!(tree(&store, View::At(snap.epoch), snap.root).await, live);
    assert_eq!(events_named(&store, &ws, "published").await.len(), 1);
}

/// Readers list the destination's whole tree in one REPEATABLE READ transaction: (path, the
/// file's live block count).
async fn list_in_one_read(
    client: &mut tokio_postgres::Client,
    parent: NodeId,
    dest: &str,
) -> Option<BTreeMap<String, i64>> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .unwrap();
    let root = tx
        .query_opt(
            "SELECT ino FROM entries WHERE parent = $1 AND name = $2 AND valid_to IS NULL",
            &[&(parent.0 as i64), &dest.as_bytes()],
        )
        .await
        .unwrap()?;
    let root: i64 = root.get(0);
    let rows = tx
        .query(
            "WITH RECURSIVE t(ino, path, kind) AS ( \
                 SELECT e.ino, e.name, e.kind FROM entries e WHERE e.parent = $1 AND e.valid_to IS NULL \
                 UNION ALL \
                 SELECT e.ino, t.path || '/'::BYTEA || e.name, e.kind FROM entries e JOIN t ON e.parent = t.ino \
                 WHERE e.valid_to IS NULL AND t.kind = 2 \
             ) SELECT t.path, (SELECT count(*) FROM file_blocks b WHERE b.ino = t.ino AND b.valid_to IS NULL) FROM t",
            &[&root],
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    Some(
        rows.iter()
            .map(|r| (String::from_utf8(r.get::<_, Vec<u8>>(0)).unwrap(), r.get(1)))
            .collect(),
    )
}

/// Per writer, the file numbers present in a listing; each must be 0..n (a consistent cut of
/// sequential writers), every file with its content.
fn writer_prefixes(listing: &BTreeMap<String, i64>, writers: usize) -> Vec<u64> {
    let mut seen: Vec<BTreeSet<u64>> = vec![BTreeSet::new(); writers];
    for (path, blocks) in listing {
        if let Some(rest) = path.strip_prefix('w') {
            let (k, i) = rest.split_once('_').unwrap();
            seen[k.parse::<usize>().unwrap()].insert(i.parse().unwrap());
            assert_eq!(*blocks, 1, "{path} is listed without its content");
        }
    }
    seen.iter()
        .map(|s| {
            let n = s.len() as u64;
            assert!(
                s.iter().copied().eq(0..n),
                "not a prefix of the writer's files: {s:?}"
            );
            n
        })
        .collect()
}

async fn concurrent_publish(mode: PublishMode) {
    const WRITERS: usize = 3;
    let (store, url) = store_and_url().await;
    let ws = workspace(&store, "pub-race", WorkspaceKind::Team).await;
    let src = mkdir(&store, &ws, ws.root, "src").await;
    let sub = mkdir(&store, &ws, src.ino, "sub").await;
    for i in 0..20 {
        write_file(&store, &ws, sub.ino, &format!("base{i:02}"), 5000 + i)
            .await
            .unwrap();
    }
    let out = mkdir(&store, &ws, ws.root, "out").await;
    let stop = Arc::new(AtomicBool::new(false));
    let done: Arc<Vec<AtomicU64>> = Arc::new((0..WRITERS).map(|_| AtomicU64::new(0)).collect());
    let mut writers = Vec::new();
    for k in 0..WRITERS {
        let (store, ws, stop, done) = (store.clone(), ws.clone(), stop.clone(), done.clone());
        writers.push(tokio::spawn(async move {
            // By node, like a mount's open folder: after a move the files land in the
            // published folder.
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                write_file(
                    &store,
                    &ws,
                    src.ino,
                    &format!("w{k}_{i:05}"),
                    (k as u64) << 32 | i,
                )
                .await
                .unwrap();
                i += 1;
                done[k].store(i, Ordering::SeqCst);
            }
        }));
    }
    let published = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let (url, stop, published) = (url.clone(), stop.clone(), published.clone());
        let parent = out.ino;
        readers.push(tokio::spawn(async move {
            let mut client = raw_client(&url).await;
            let mut seen = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let must_exist = published.load(Ordering::SeqCst);
                let listing = list_in_one_read(&mut client, parent, "final").await;
                assert!(listing.is_some() || !must_exist, "the published folder vanished");
                if let Some(l) = listing {
                    seen.push(l);
                }
            }
            seen
        }));
    }
    // Let the writers get going, then publish while they write.
    // A writer that failed stops counting: stop waiting, and its join below reports why.
    let failed = |w: &[tokio::task::JoinHandle<()>]| w.iter().any(tokio::task::JoinHandle::is_finished);
    while done.iter().any(|d| d.load(Ordering::SeqCst) < 15) && !failed(&writers) {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let before: Vec<u64> = done.iter().map(|d| d.load(Ordering::SeqCst)).collect();
    let report = store
        .publish(
            &actor(),
            ws.id,
            "/src",
            "/out/final",
            &options(mode, "final", MergeMode::Fail),
        )
        .await
        .unwrap();
    published.store(true, Ordering::SeqCst);
    let after_publish: Vec<u64> = done.iter().map(|d| d.load(Ordering::SeqCst)).collect();
    while done
        .iter()
        .zip(&after_publish)
        .any(|(d, a)| d.load(Ordering::SeqCst) < a + 15)
        && !failed(&writers)
    {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    let listings: Vec<BTreeMap<String, i64>> = futures::future::join_all(readers)
        .await
        .into_iter()
        .flat_map(|r| r.unwrap())
        .collect();
    // The snapshot is a consistent cut: per writer, everything written before the publish
    // began and nothing past what had returned once it returned.
    let snap = report.snapshot;
    let in_snapshot = tree(&store, View::At(snap.epoch), snap.root).await;
    let as_listing: BTreeMap<String, i64> = in_snapshot
        .iter()
        .map(|(p, n)| (p.trim_start_matches('/').to_string(), n.blocks.len() as i64))
        .collect();
    let cut = writer_prefixes(&as_listing, WRITERS);
    for k in 0..WRITERS {
        assert!(
            cut[k] >= before[k] && cut[k] <= after_publish[k],
            "writer {k}: {} not in [{}, {}]",
            cut[k],
            before[k],
            after_publish[k]
        );
    }
    assert_eq!(as_listing.keys().filter(|p| p.starts_with("sub/")).count(), 20);
    assert!(!listings.is_empty());
    for l in &listings {
        let n = writer_prefixes(l, WRITERS);
        match mode {
            // Nobody writes the copy: every read sees exactly the snapshot.
            PublishMode::Copy => assert_eq!(l, &as_listing, "a reader saw part of the published folder"),
            // The writers go on in the moved folder: every read sees all of the snapshot.
            PublishMode::Move => {
                for k in 0..WRITERS {
                    assert!(n[k] >= cut[k], "a reader saw less than the published cut");
                }
                assert!(as_listing.keys().all(|p| l.contains_key(p)));
            }
        }
    }
    let source_left = store.resolve(ws.id, "/src").await;
    match mode {
        PublishMode::Copy => assert!(source_left.is_ok()),
        PublishMode::Move => assert_eq!(source_left.unwrap_err().kind(), ErrorKind::NotFound),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_and_readers_never_see_a_half_published_copy() {
    concurrent_publish(PublishMode::Copy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_and_readers_never_see_a_half_published_move() {
    concurrent_publish(PublishMode::Move).await;
}

/// Random changes inside /proj/f (and across its boundary with /other).
async fn mutate(
    store: &PgMetaStore,
    ws: &Workspace,
    f: NodeId,
    other: NodeId,
    rng: &mut rand::rngs::StdRng,
    steps: usize,
) {
    let first = 1_000_000 + rng.random_range(0..1_000_000u64) * 100;
    for tag in first + 1..=first + steps as u64 {
        let live = tree(store, View::Live, f).await;
        let dirs: Vec<NodeId> = std::iter::once(f)
            .chain(
                futures::future::join_all(
                    live.iter()
                        .filter(|(_, n)| n.kind == NodeKind::Directory)
                        .map(|(p, _)| store.resolve_from(View::Live, f, p)),
                )
                .await
                .into_iter()
                .map(|a| a.unwrap().ino),
            )
            .collect();
        let paths: Vec<&String> = live.keys().collect();
        let pick_dir = |rng: &mut rand::rngs::StdRng| dirs[rng.random_range(0..dirs.len())];
        let a = actor();
        let result: Result<(), drive::MetaError> = async {
            match rng.random_range(0..11) {
                0 | 1 => {
                    let d = pick_dir(rng);
                    write_file(store, ws, d, &format!("n{tag}"), tag).await.map(drop)
                }
                2 if !paths.is_empty() => {
                    let p = paths[rng.random_range(0..paths.len())];
                    let node = store.resolve_from(View::Live, f, p).await?;
                    if node.kind == NodeKind::File {
                        overwrite(store, ws, node.ino, tag).await.map(drop)
                    } else {
                        Ok(())
                    }
                }
                3 if !paths.is_empty() => {
                    let p = paths[rng.random_range(0..paths.len())];
                    let (parent, leaf) = p.rsplit_once('/').unwrap();
                    let parent = store.resolve_from(View::Live, f, parent).await?;
                    let node = store.resolve_from(View::Live, f, p).await?;
                    if node.kind == NodeKind::Directory {
                        store.rmdir(&a, ws.id, parent.ino, &name(leaf)).await.map(drop)
                    } else {
                        store.unlink(&a, ws.id, parent.ino, &name(leaf)).await.map(drop)
                    }
                }
                4 if !paths.is_empty() => {
                    // Rename within the folder.
                    let p = paths[rng.random_range(0..paths.len())];
                    let (parent, leaf) = p.rsplit_once('/').unwrap();
                    let parent = store.resolve_from(View::Live, f, parent).await?;
                    let to = pick_dir(rng);
                    store
                        .rename(
                            &a,
                            ws.id,
                            parent.ino,
                            &name(leaf),
                            to,
                            &name(&format!("r{tag}")),
                            RenameMode::Replace,
                        )
                        .await
                }
                5 if !paths.is_empty() => {
                    // Out of the folder.
                    let p = paths[rng.random_range(0..paths.len())];
                    let (parent, leaf) = p.rsplit_once('/').unwrap();
                    let parent = store.resolve_from(View::Live, f, parent).await?;
                    store
                        .rename(
                            &a,
                            ws.id,
                            parent.ino,
                            &name(leaf),
                            other,
                            &name(&format!("out{tag}")),
                            RenameMode::NoReplace,
                        )
                        .await
                }
                6 => {
                    // Into the folder, from outside.
                    let outside = store.readdir(View::Live, other, None, 1000).await?;
                    if outside.is_empty() {
                        return Ok(());
                    }
                    let e = &outside[rng.random_range(0..outside.len())];
                    let to = pick_dir(rng);
                    store
                        .rename(
                            &a,
                            ws.id,
                            other,
                            &e.name,
                            to,
                            &name(&format!("in{tag}")),
                            RenameMode::NoReplace,
                        )
                        .await
                }
                7 => store
                    .create(&a, ws.id, pick_dir(rng), &name(&format!("d{tag}")), &dir())
                    .await
                    .map(drop),
                8 if !paths.is_empty() => {
                    let p = paths[rng.random_range(0..paths.len())];
                    let node = store.resolve_from(View::Live, f, p).await?;
                    let change = SetAttr {
                        mode: Some(0o600 | (tag as u32 & 0o77)),
                        ..SetAttr::default()
                    };
                    store.setattr(&a, ws.id, node.ino, &change).await.map(drop)
                }
                9 if !paths.is_empty() => {
                    // A hard link within the folder.
                    let p = paths[rng.random_range(0..paths.len())];
                    let node = store.resolve_from(View::Live, f, p).await?;
                    if node.kind == NodeKind::File {
                        store
                            .link(&a, ws.id, node.ino, pick_dir(rng), &name(&format!("h{tag}")))
                            .await
                            .map(drop)
                    } else {
                        Ok(())
                    }
                }
                10 if !paths.is_empty() => {
                    // A whole folder deleted at once.
                    let p = paths[rng.random_range(0..paths.len())];
                    let node = store.resolve_from(View::Live, f, p).await?;
                    if node.kind == NodeKind::Directory {
                        let full = format!("/proj/f{p}");
                        store.delete_path(&a, ws.id, &full).await
                    } else {
                        Ok(())
                    }
                }
                _ => Ok(()),
            }
        }
        .await;
        if let Err(e) = result {
            // Refusals of the random operations (taken names, non-empty folders, moves into
            // themselves) are part of the game.
            assert!(
                matches!(
                    e.kind(),
                    ErrorKind::Exists
                        | ErrorKind::NotEmpty
                        | ErrorKind::InvalidArgument
                        | ErrorKind::NotFound
                ),
                "{e}"
            );
        }
    }
}

/// /proj/f with nested folders and files, /other beside it with a few files.
async fn project_tree(store: &PgMetaStore, ws: &Workspace) -> (NodeId, NodeId) {
    let proj = mkdir(store, ws, ws.root, "proj").await;
    let f = mkdir(store, ws, proj.ino, "f").await;
    let other = mkdir(store, ws, ws.root, "other").await;
    for d in 0..3 {
        let sub = mkdir(store, ws, f.ino, &format!("s{d}")).await;
        for i in 0..4 {
            write_file(store, ws, sub.ino, &format!("file{i}.{d}"), 10 * d + i)
                .await
                .unwrap();
        }
        let inner = mkdir(store, ws, sub.ino, "inner").await;
        write_file(store, ws, inner.ino, "x", 90 + d).await.unwrap();
    }
    write_file(store, ws, f.ino, "top.txt", 77).await.unwrap();
    for i in 0..3 {
        write_file(store, ws, other.ino, &format!("o{i}"), 300 + i)
            .await
            .unwrap();
    }
    (f.ino, other.ino)
}

async fn revert_matches_target(seed: u64, by_epoch: bool) {
    let (store, url) = store_and_url().await;
    let ws = workspace(&store, &format!("rev-{seed}"), WorkspaceKind::Team).await;
    let (f, other) = project_tree(&store, &ws).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    mutate(&store, &ws, f, other, &mut rng, 10).await;
    let snap = store
        .create_snapshot(&actor(), ws.id, "before", "/proj")
        .await
        .unwrap();
    let expected = tree(&store, View::Live, f).await;
    assert_eq!(tree(&store, View::At(snap.epoch), f).await, expected);
    // A later snapshot, to check that the revert leaves snapshots alone.
    mutate(&store, &ws, f, other, &mut rng, 30).await;
    let mid = store.create_snapshot(&actor(), ws.id, "mid", "/").await.unwrap();
    let mid_tree = tree(&store, View::At(mid.epoch), ws.root).await;
    mutate(&store, &ws, f, other, &mut rng, 30).await;
    let outside = tree(&store, View::Live, other).await;
    let target = if by_epoch {
        store.delete_snapshot(&actor(), ws.id, "before").await.unwrap();
        RevertTarget::Epoch(snap.epoch)
    } else {
        RevertTarget::Snapshot("before")
    };
    let usage_before = store.workspace_usage(ws.id).await.unwrap();
    let report = store
        .revert(&actor(), ws.id, "/proj/f", target, MergeMode::Overwrite)
        .await
        .unwrap();
    let live = tree(&store, View::Live, f).await;
    assert_eq!(
        live.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "seed {seed}: names"
    );
    for (path, want) in &expected {
        // A file also linked from outside the folder (or from a folder deleted whole, in the
        // trash) keeps those names: it may have more links than at the target.
        let mut got = live[path].clone();
        if got.kind == NodeKind::File && got.nlink > want.nlink {
            got.nlink = want.nlink;
        }
        assert_eq!(&got, want, "seed {seed}: {path} ({report:?})");
    }
    // Nothing outside the folder changed, but for files hard-linked into it: those are
    // restored in place and the outside name sees it (documented on `revert`).
    let single = |t: BTreeMap<String, Node>| -> BTreeMap<String, Node> {
        t.into_iter()
            .filter(|(_, n)| !(n.kind == NodeKind::File && n.nlink > 1))
            .collect()
    };
    let outside_now = tree(&store, View::Live, other).await;
    assert_eq!(
        outside_now.keys().collect::<Vec<_>>(),
        outside.keys().collect::<Vec<_>>(),
        "seed {seed}"
    );
    assert_eq!(
        single(outside_now),
        single(outside),
        "seed {seed}: nothing outside the folder changed"
    );
    assert_eq!(
        tree(&store, View::At(mid.epoch), ws.root).await,
        mid_tree,
        "seed {seed}: snapshots are unchanged"
    );
    if !by_epoch {
        assert_eq!(tree(&store, View::At(snap.epoch), f).await, expected);
    }
    let reverted = events_named(&store, &ws, "reverted").await;
    assert_eq!(reverted.len(), 1);
    assert_eq!(reverted[0].ino, Some(f));
    assert_eq!(reverted[0].epoch, Some(snap.epoch));
    assert_eq!(
        reverted[0].snapshot.as_deref(),
        if by_epoch { None } else { Some("before") }
    );
    // The usage counters agree with a fresh count of the live tree.
    let counted = live_usage(&url, &ws).await;
    let usage = store.workspace_usage(ws.id).await.unwrap();
    assert_eq!(
        (usage.nodes, usage.bytes),
        counted,
        "seed {seed}: usage (before the revert {usage_before:?})"
    );
    // Further changes after the revert reach neither snapshot.
    mutate(&store, &ws, f, other, &mut rng, 10).await;
    assert_eq!(tree(&store, View::At(mid.epoch), ws.root).await, mid_tree);
    if !by_epoch {
        assert_eq!(tree(&store, View::At(snap.epoch), f).await, expected);
    }
    // Reverting again to the same target right away gives the same tree.
    let again = store
        .revert(&actor(), ws.id, "/proj/f", target, MergeMode::Overwrite)
        .await
        .unwrap();
    let live = tree(&store, View::Live, f).await;
    assert_eq!(
        live.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "seed {seed}: {again:?}"
    );
    for (path, want) in &expected {
        assert_eq!(
            (&live[path].blocks, live[path].mode),
            (&want.blocks, want.mode),
            "seed {seed}: {path}"
        );
    }
}

/// (nodes, bytes) as the usage counters count them (migration 6's backfill): every live
/// node with a link but the root, bytes of regular files.
async fn live_usage(url: &str, ws: &Workspace) -> (u64, u64) {
    let client = raw_client(url).await;
    let row = client
        .query_one(
            "SELECT count(*), COALESCE(sum(size) FILTER (WHERE kind = 1), 0)::INT8 FROM inodes \
             WHERE workspace_id = $1 AND valid_to IS NULL AND nlink > 0 AND ino <> $2",
            &[&ws.id.0, &(ws.root.0 as i64)],
        )
        .await
        .unwrap();
    (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64)
}

#[tokio::test]
async fn revert_to_a_snapshot_gives_back_its_tree_file_by_file() {
    for seed in 1..=4 {
        revert_matches_target(seed, false).await;
    }
}

#[tokio::test]
async fn revert_to_an_epoch_gives_back_its_tree_file_by_file() {
    for seed in 11..=13 {
        revert_matches_target(seed, true).await;
    }
}

#[tokio::test]
async fn revert_merge_modes_decide_what_happens_to_what_is_new() {
    let (store, url) = store_and_url().await;
    let ws = workspace(&store, "rev-merge", WorkspaceKind::Team).await;
    let f = mkdir(&store, &ws, ws.root, "f").await;
    let a = write_file(&store, &ws, f.ino, "a", 1).await.unwrap();
    let b = write_file(&store, &ws, f.ino, "b", 2).await.unwrap();
    mkdir(&store, &ws, f.ino, "keep").await;
    store.create_snapshot(&actor(), ws.id, "s", "/f").await.unwrap();
    let snap = store.get_snapshot(ws.id, "s").await.unwrap();
    let expected = tree(&store, View::At(snap.epoch), f.ino).await;
    // Since: a deleted and another file made under its name, b changed, c and a folder new.
    store.unlink(&actor(), ws.id, f.ino, &name("a")).await.unwrap();
    let new_a = write_file(&store, &ws, f.ino, "a", 11).await.unwrap();
    overwrite(&store, &ws, b.ino, 12).await.unwrap();
    write_file(&store, &ws, f.ino, "c", 13).await.unwrap();
    let newdir = mkdir(&store, &ws, f.ino, "newdir").await;
    write_file(&store, &ws, newdir.ino, "inside", 14).await.unwrap();
    let changed = tree(&store, View::Live, f.ino).await;

    // Fail: something would be lost; nothing is written.
    let e = store
        .revert(
            &actor(),
            ws.id,
            "/f",
            RevertTarget::Snapshot("s"),
            MergeMode::Fail,
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Exists, "{e}");
    for n in ["a", "c", "newdir"] {
        assert!(e.to_string().contains(n), "{e}");
    }
    assert_eq!(tree(&store, View::Live, f.ino).await, changed);
    assert!(events_named(&store, &ws, "reverted").await.is_empty());

    // Skip: what is new stays (the new "a" keeps its name); the rest goes back.
    let report = store
        .revert(
            &actor(),
            ws.id,
            "/f",
            RevertTarget::Snapshot("s"),
            MergeMode::Skip,
        )
        .await
        .unwrap();
    assert_eq!((report.kept, report.skipped), (3, 1), "{report:?}");
    let live = tree(&store, View::Live, f.ino).await;
    assert_eq!(live["/a"].blocks, changed["/a"].blocks, "the new a was kept");
    assert_eq!(live["/b"], expected["/b"], "b has its content back");
    assert!(live.contains_key("/c") && live.contains_key("/newdir/inside"));
    assert_eq!(live["/keep"], expected["/keep"]);
    assert_eq!(
        store.getattr(View::Live, f.ino).await.unwrap().nlink,
        4,
        "f has keep and newdir"
    );
    assert_eq!(
        store.getattr(View::Live, a.ino).await.unwrap().nlink,
        0,
        "the old a stays deleted"
    );

    // Overwrite: exactly the snapshot; what is new goes to the trash.
    let report = store
        .revert(
            &actor(),
            ws.id,
            "/f",
            RevertTarget::Snapshot("s"),
            MergeMode::Overwrite,
        )
        .await
        .unwrap();
    assert_eq!(tree(&store, View::Live, f.ino).await, expected, "{report:?}");
    assert_eq!(store.getattr(View::Live, a.ino).await.unwrap().nlink, 1);
    let trash: Vec<NodeId> = store
        .trash_list(ws.id, None, 100)
        .await
        .unwrap()
        .iter()
        .map(|t| t.ino)
        .collect();
    assert!(
        trash.contains(&new_a.ino) && trash.contains(&newdir.ino),
        "{trash:?}"
    );
    let usage = store.workspace_usage(ws.id).await.unwrap();
    // The new folder's file stays counted until the purge, as after any delete of a whole folder.
    assert_eq!((usage.nodes, usage.bytes), live_usage(&url, &ws).await);
}

#[tokio::test]
async fn revert_refuses_what_write_once_forbids_and_changes_nothing() {
    let store = store().await;
    let ws = workspace(&store, "rev-once", WorkspaceKind::Project).await;
    let f = mkdir(&store, &ws, ws.root, "f").await;
    write_file(&store, &ws, f.ino, "plate.exr", 1).await.unwrap();
    store.create_snapshot(&actor(), ws.id, "s", "/f").await.unwrap();
    write_file(&store, &ws, f.ino, "comp.exr", 2).await.unwrap();
    let changed = tree(&store, View::Live, f.ino).await;
    let e = store
        .revert(
            &actor(),
            ws.id,
            "/f",
            RevertTarget::Snapshot("s"),
            MergeMode::Overwrite,
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert_eq!(tree(&store, View::Live, f.ino).await, changed);
    // Skip removes nothing: allowed (a rename of the committed file is given back).
    store
        .rename(
            &actor(),
            ws.id,
            f.ino,
            &name("plate.exr"),
            f.ino,
            &name("moved.exr"),
            RenameMode::NoReplace,
        )
        .await
        .unwrap();
    let report = store
        .revert(
            &actor(),
            ws.id,
            "/f",
            RevertTarget::Snapshot("s"),
            MergeMode::Skip,
        )
        .await
        .unwrap();
    assert_eq!(
        (report.moved_back, report.restored, report.kept),
        (1, 1, 1),
        "{report:?}"
    );
    let live = tree(&store, View::Live, f.ino).await;
    assert!(
        live.contains_key("/plate.exr") && live.contains_key("/comp.exr") && !live.contains_key("/moved.exr")
    );
}

#[tokio::test]
async fn revert_refuses_bad_targets_with_typed_errors() {
    let store = store().await;
    let ws = workspace(&store, "rev-bad", WorkspaceKind::Team).await;
    let f = mkdir(&store, &ws, ws.root, "f").await;
    mkdir(&store, &ws, ws.root, "g").await;
    store
        .create_snapshot(&actor(), ws.id, "of-g", "/g")
        .await
        .unwrap();
    store.create_snapshot(&actor(), ws.id, "s", "/").await.unwrap();
    store.rmdir(&actor(), ws.id, ws.root, &name("f")).await.unwrap();
    mkdir(&store, &ws, ws.root, "f").await;
    mkdir(&store, &ws, ws.root, "h").await;
    let epoch = store.get_workspace("rev-bad").await.unwrap().epoch;
    let cases: Vec<(&str, RevertTarget<'_>, ErrorKind)> = vec![
        ("/f", RevertTarget::Snapshot("missing"), ErrorKind::NotFound),
        ("/f", RevertTarget::Snapshot("of-g"), ErrorKind::InvalidArgument),
        ("/f", RevertTarget::Snapshot("s"), ErrorKind::Conflict),
        ("/h", RevertTarget::Snapshot("s"), ErrorKind::NotFound),
        ("/nope", RevertTarget::Snapshot("s"), ErrorKind::NotFound),
        ("/g", RevertTarget::Epoch(epoch), ErrorKind::InvalidArgument),
        ("/g", RevertTarget::Epoch(Epoch(0)), ErrorKind::InvalidArgument),
        ("/g/..", RevertTarget::Snapshot("s"), ErrorKind::InvalidName),
        ("/g", RevertTarget::Snapshot("Bad Name"), ErrorKind::InvalidName),
    ];
    for (path, target, want) in cases {
        let e = store
            .revert(&actor(), ws.id, path, target, MergeMode::Overwrite)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), want, "{path} {target:?}: {e}");
    }
    assert!(events_named(&store, &ws, "reverted").await.is_empty());
    let _ = f;
}

/// Rows of `entries`, `inodes` and `file_blocks` written in epoch `e` (born or ended in it).
async fn rows_of_epoch(url: &str, e: i64) -> i64 {
    let client = raw_client(url).await;
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM entries WHERE valid_from = $1 OR valid_to = $1) \
                  + (SELECT count(*) FROM inodes WHERE valid_from = $1 OR valid_to = $1) \
                  + (SELECT count(*) FROM file_blocks WHERE valid_from = $1 OR valid_to = $1)",
            &[&e],
        )
        .await
        .unwrap();
    row.get(0)
}

#[tokio::test]
async fn revert_of_three_changes_in_ten_thousand_files_writes_rows_for_the_changes_only() {
    let (store, url) = store_and_url().await;
    let ws = workspace(&store, "rev-big", WorkspaceKind::Team).await;
    let big = mkdir(&store, &ws, ws.root, "big").await;
    let seed = mkdir(&store, &ws, ws.root, "seed").await;
    for i in 0..100 {
        write_file(&store, &ws, seed.ino, &format!("frame.{i:04}.exr"), 20_000 + i)
            .await
            .unwrap();
    }
    for d in 0..100 {
        store
            .copy(
                &actor(),
                ws.id,
                View::Live,
                seed.ino,
                big.ino,
                &name(&format!("shot{d:03}")),
                MergeMode::Fail,
            )
            .await
            .unwrap();
    }
    store.delete_path(&actor(), ws.id, "/seed").await.unwrap();
    let snap = store.create_snapshot(&actor(), ws.id, "s", "/big").await.unwrap();
    // Three changes: one file rewritten, one deleted, one created.
    let shot = store.resolve(ws.id, "/big/shot042").await.unwrap();
    let victim = store.resolve(ws.id, "/big/shot042/frame.0007.exr").await.unwrap();
    overwrite(&store, &ws, victim.ino, 7).await.unwrap();
    store
        .unlink(&actor(), ws.id, shot.ino, &name("frame.0008.exr"))
        .await
        .unwrap();
    write_file(&store, &ws, shot.ino, "frame.0100.exr", 8)
        .await
        .unwrap();
    // A fresh epoch, so that the rows the revert writes are the rows of that epoch.
    store
        .create_snapshot(&actor(), ws.id, "fresh", "/")
        .await
        .unwrap();
    let epoch = store.get_workspace("rev-big").await.unwrap().epoch;
    let started = std::time::Instant::now();
    let report = store
        .revert(
            &actor(),
            ws.id,
            "/big",
            RevertTarget::Snapshot("s"),
            MergeMode::Overwrite,
        )
        .await
        .unwrap();
    let revert_time = started.elapsed();
    let written = rows_of_epoch(&url, epoch.0).await;
    assert_eq!(report.rows_written as i64, written, "{report:?}");
    // victim: inode closed + inserted, block closed + inserted; frame 8: entry + inode (2);
    // frame 100: entry closed, inode closed (2); shot042's row (2).
    assert!(
        written <= 12,
        "{written} rows written for three changes: {report:?}"
    );
    assert_eq!(
        (report.removed, report.restored, report.updated),
        (1, 1, 3),
        "{report:?}"
    );
    // The same restore by copying the snapshot's tree, for comparison.
    let started = std::time::Instant::now();
    store
        .copy(
            &actor(),
            ws.id,
            View::At(snap.epoch),
            snap.root,
            ws.root,
            &name("restored"),
            MergeMode::Fail,
        )
        .await
        .unwrap();
    let copy_time = started.elapsed();
    let copy_epoch = store.get_workspace("rev-big").await.unwrap().epoch;
    let copy_rows = rows_of_epoch(&url, copy_epoch.0).await - written;
    println!(
        "revert of 3 changes in 10,000 files: {written} rows, {revert_time:?}; \
         copy-based restore: {copy_rows} rows, {copy_time:?}"
    );
    let spot = [
        "/shot042",
        "/shot042/frame.0007.exr",
        "/shot042/frame.0008.exr",
        "/shot001/frame.0050.exr",
    ];
    let live = tree(&store, View::Live, big.ino).await;
    let then = tree(&store, View::At(snap.epoch), big.ino).await;
    assert_eq!(live.len(), 10_100);
    assert_eq!(live, then);
    for p in spot {
        assert!(live.contains_key(p), "{p}");
    }
}
