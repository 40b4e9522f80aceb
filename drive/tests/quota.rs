//! Quotas and usage counters: a content commit that would take a workspace above its quota
//! fails with EDQUOT and leaves the file's previous content; two commits that each fit alone
//! cannot both commit past the quota; the counters survive folding and are rebuilt by the
//! migration's backfill. The file-system cases run over both metadata stores.

mod common;

use std::sync::Arc;

use drive::data::{BlockCodec, BlockStore, ChunkStore, MemoryChunkStore};
use drive::fs::{Caller, DriveFs, FsConfig, FsErrorKind, OpenFlags, ROOT_INO};
use drive::meta::BlockChange;
use drive::model::{MIN_BLOCK_SIZE, NewNode, NodeKind, Timestamp, View, WorkspaceKind, WorkspaceSpec};
use drive::{ErrorKind, MemMetaStore, MetaStore, PgMetaStore};

const KIB: u64 = 1024;

type Fs<M> = DriveFs<BlockStore<M>, M>;

fn rw() -> OpenFlags {
    OpenFlags {
        read: true,
        write: true,
        ..OpenFlags::default()
    }
}

/// A workspace of 64 KiB blocks with `quota` bytes, and a mount of it.
async fn mounted<M: MetaStore>(meta: &M, name: &str, quota: u64) -> (Fs<M>, tempfile::TempDir) {
    let mut spec = WorkspaceSpec::new(name, WorkspaceKind::User);
    spec.block_size = MIN_BLOCK_SIZE;
    spec.quota_bytes = Some(quota);
    let ws = meta
        .create_workspace(&common::actor(), &spec)
        .await
        .expect("workspace");
    let chunks: Arc<dyn ChunkStore> = Arc::new(MemoryChunkStore::new());
    let blocks = BlockStore::new(meta.clone(), chunks, BlockCodec::plaintext(), None);
    let tmp = tempfile::tempdir().expect("temp dir");
    let cfg = FsConfig::new(View::Live, ws.root, tmp.path().join("staging"));
    let fs = DriveFs::new(meta.clone(), Arc::new(blocks), ws, cfg).expect("mount");
    (fs, tmp)
}

fn bytes(len: u64, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

/// Creates (or with `ino`, opens) a file, writes `data` at 0 and closes it: the first error.
async fn write_file<M: MetaStore>(
    fs: &Fs<M>,
    name: &str,
    ino: Option<u64>,
    data: &[u8],
) -> Result<u64, FsErrorKind> {
    let caller = Caller::default();
    let opened = match ino {
        Some(ino) => fs.open(ino, rw(), caller).await,
        None => fs.create(ROOT_INO, name.as_bytes(), 0o644, rw(), caller).await,
    }
    .map_err(|e| e.kind())?;
    let written = fs.write(opened.fh, 0, data).await.map(drop);
    let flushed = fs.flush(opened.fh, caller).await;
    let released = fs.release(opened.fh, caller).await;
    written.and(flushed).and(released).map_err(|e| e.kind())?;
    Ok(opened.attr.ino.0)
}

async fn read_file<M: MetaStore>(fs: &Fs<M>, name: &str) -> Vec<u8> {
    let attr = fs.lookup(ROOT_INO, name.as_bytes()).await.expect("lookup");
    let ino = fs.to_ino(attr.ino);
    let opened = fs
        .open(ino, OpenFlags::default(), Caller::default())
        .await
        .expect("open");
    let data = fs.read(opened.fh, 0, attr.size as u32).await.expect("read");
    fs.release(opened.fh, Caller::default()).await.expect("release");
    data.to_vec()
}

async fn refuses_the_commit_that_crosses_the_quota<M: MetaStore>(meta: M) {
    let (fs, _tmp) = mounted(&meta, "quota-fs", 256 * KIB).await;
    let a = bytes(128 * KIB, 1);
    let b = bytes(100 * KIB, 2);
    let a_ino = write_file(&fs, "a", None, &a).await.expect("a fits");
    write_file(&fs, "b", None, &b).await.expect("b fits");

    // 228 KiB used, 28 left: growing a by 72 KiB fails, at write or at close.
    let bigger = bytes(200 * KIB, 3);
    assert_eq!(
        write_file(&fs, "a", Some(a_ino), &bigger).await,
        Err(FsErrorKind::QuotaExceeded)
    );
    assert_eq!(
        read_file(&fs, "a").await,
        a,
        "the refused file keeps its committed content"
    );
    // A new file whose content does not fit: refused at write, the create stands (empty, as
    // on any file system); refused at close, the file is not created at all.
    assert_eq!(
        write_file(&fs, "c", None, &bytes(64 * KIB, 4)).await,
        Err(FsErrorKind::QuotaExceeded)
    );
    let c = fs.lookup(ROOT_INO, b"c").await.map_err(|e| e.kind());
    assert!(matches!(&c, Ok(a) if a.size == 0) || matches!(c, Err(FsErrorKind::NotFound)));
    if c.is_ok() {
        fs.unlink(ROOT_INO, b"c", Caller::default())
            .await
            .expect("unlink c");
    }
    let usage = meta.workspace_usage(fs.workspace().id).await.expect("usage");
    assert_eq!((usage.bytes, usage.nodes), (228 * KIB, 2));
    assert_eq!(usage.quota_bytes, Some(256 * KIB));

    // Freeing space lets the same write through; statfs shows the quota and the counters.
    fs.unlink(ROOT_INO, b"b", Caller::default())
        .await
        .expect("unlink b");
    fs.fsyncdir().await.expect("queued removals land");
    fs.statfs().await.expect("statfs"); // the mount may now hold figures from before the unlink
    write_file(&fs, "a", Some(a_ino), &bigger)
        .await
        .expect("fits after the unlink");
    assert_eq!(read_file(&fs, "a").await, bigger);
    let usage = meta.workspace_usage(fs.workspace().id).await.expect("usage");
    assert_eq!((usage.bytes, usage.nodes), (200 * KIB, 1));
    // statfs answers from figures up to USAGE_TTL old: poll until the new ones show.
    let deadline = std::time::Instant::now() + drive::fs::USAGE_TTL * 5;
    let s = loop {
        let s = fs.statfs().await.expect("statfs");
        if (s.blocks - s.bfree) * u64::from(s.frsize) == 200 * KIB || std::time::Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!((s.blocks - s.bfree) * u64::from(s.frsize), 200 * KIB);
    assert_eq!(s.blocks * u64::from(s.frsize), 256 * KIB);
    assert_eq!(s.files - s.ffree, 1);
}

#[tokio::test]
async fn memory_store_refuses_the_commit_that_crosses_the_quota() {
    refuses_the_commit_that_crosses_the_quota(MemMetaStore::new()).await;
}

#[tokio::test]
async fn postgres_store_refuses_the_commit_that_crosses_the_quota() {
    refuses_the_commit_that_crosses_the_quota(common::store().await).await;
}

/// Two commits that each fit alone but not together: one commits, the other is refused
/// (the check runs inside each commit's transaction).
#[tokio::test]
async fn concurrent_commits_cannot_both_slip_under_the_quota() {
    let store = common::store().await;
    let mut spec = WorkspaceSpec::new("quota-race", WorkspaceKind::User);
    spec.quota_bytes = Some(100);
    let ws = store.create_workspace(&common::actor(), &spec).await.unwrap();
    let file = NewNode::new(NodeKind::File, 0o644);
    let x = store
        .create(&common::actor(), ws.id, ws.root, &common::name("x"), &file)
        .await
        .unwrap();
    let y = store
        .create(&common::actor(), ws.id, ws.root, &common::name("y"), &file)
        .await
        .unwrap();
    for round in 0..5u8 {
        let (hx, hy) = ([round; 32], [round + 100; 32]);
        store.register_block(&hx, 60, 60).await.unwrap();
        store.register_block(&hy, 60, 60).await.unwrap();
        let commit = |ino, hash| {
            let store = store.clone();
            async move {
                let change = [BlockChange {
                    idx: 0,
                    block: Some((hash, 60)),
                }];
                store
                    .commit_content(&common::actor(), ws.id, ino, 0, &change, 60, Timestamp(1))
                    .await
            }
        };
        let (rx, ry) = tokio::join!(commit(x.ino, hx), commit(y.ino, hy));
        let refused = [&rx, &ry]
            .iter()
            .filter(|r| r.as_ref().is_err_and(|e| e.kind() == ErrorKind::QuotaExceeded))
            .count();
        assert_eq!(
            refused, 1,
            "round {round}: exactly one commit is refused: {rx:?} {ry:?}"
        );
        assert_eq!(store.workspace_usage(ws.id).await.unwrap().bytes, 60);
        // Back to empty for the next round.
        let committed = if rx.is_ok() { x.ino } else { y.ino };
        store
            .commit_content(
                &common::actor(),
                ws.id,
                committed,
                0,
                &[BlockChange { idx: 0, block: None }],
                0,
                Timestamp(2),
            )
            .await
            .unwrap();
        assert_eq!(store.workspace_usage(ws.id).await.unwrap().bytes, 0);
    }
}

async fn change_rows(url: &str, ws: drive::model::WorkspaceId) -> i64 {
    let client = common::raw_client(url).await;
    let row = client
        .query_one(
            "SELECT count(*) FROM usage_changes WHERE workspace_id = $1",
            &[&ws.0],
        )
        .await
        .unwrap();
    row.get(0)
}

/// Readers fold many change rows into one with the same totals; dropping the counters and
/// running migration 6 again rebuilds them from the tree (hard links once, the nodes below a
/// deleted folder until the purge).
#[tokio::test]
async fn counters_fold_and_the_backfill_rebuilds_them() {
    let (store, url) = common::store_and_url().await;
    let ws = common::workspace(&store, "quota-fold", WorkspaceKind::User).await;
    let a = common::actor();
    let dir = store
        .create(
            &a,
            ws.id,
            ws.root,
            &common::name("d"),
            &NewNode::new(NodeKind::Directory, 0o755),
        )
        .await
        .unwrap();
    let file = NewNode::new(NodeKind::File, 0o644);
    for i in 0..70 {
        store
            .create(&a, ws.id, dir.ino, &common::name(&format!("f{i}")), &file)
            .await
            .unwrap();
    }
    let big = store
        .create(&a, ws.id, ws.root, &common::name("big"), &file)
        .await
        .unwrap();
    store.register_block(&[9; 32], 1000, 1000).await.unwrap();
    let change = [BlockChange {
        idx: 0,
        block: Some(([9; 32], 1000)),
    }];
    store
        .commit_content(&a, ws.id, big.ino, 0, &change, 1000, Timestamp(1))
        .await
        .unwrap();
    store
        .link(&a, ws.id, big.ino, ws.root, &common::name("big-link"))
        .await
        .unwrap();
    assert!(change_rows(&url, ws.id).await > 64);
    let usage = store.workspace_usage(ws.id).await.unwrap();
    assert_eq!((usage.bytes, usage.nodes), (1000, 72));
    assert_eq!(change_rows(&url, ws.id).await, 1, "the reader folded the rows");
    assert_eq!(store.workspace_usage(ws.id).await.unwrap(), usage);

    // An O(1) subtree delete gives back the folder itself; its files keep their links (and
    // their charge) until the lifecycle purge.
    store.delete_path(&a, ws.id, "/d").await.unwrap();
    let usage = store.workspace_usage(ws.id).await.unwrap();
    assert_eq!((usage.bytes, usage.nodes), (1000, 71));
    store
        .unlink(&a, ws.id, ws.root, &common::name("big"))
        .await
        .unwrap();
    let usage = store.workspace_usage(ws.id).await.unwrap();
    assert_eq!((usage.bytes, usage.nodes), (1000, 71), "big still has a link");

    let client = common::raw_client(&url).await;
    client
        .batch_execute(
            "DROP TABLE usage_changes; DROP SEQUENCE usage_change_ids; \
             DELETE FROM schema_migrations WHERE version = 6",
        )
        .await
        .unwrap();
    let again = PgMetaStore::connect(&drive::MetaConfig::new(url.clone()))
        .await
        .unwrap();
    assert_eq!(again.workspace_usage(ws.id).await.unwrap(), usage);
}
