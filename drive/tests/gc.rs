//! Block garbage collection against real PostgreSQL and an in-memory object store: what a
//! pass deletes, what it must keep, dry runs, orphans, and a writer meeting a claim.

mod common;

use std::sync::Arc;
use std::time::Duration;

use drive::PgMetaStore;
use drive::data::{ChunkStore, MemoryChunkStore};
use drive::fs::{Caller, DriveFs, OpenFlags, ROOT_INO};
use drive::gc::{BlockPassOptions, run_block_pass};
use drive::model::MIN_BLOCK_SIZE;
use drive::mount::{self, MountPath, MountSpec, MountTarget, NewWorkspace};

type Fs = DriveFs<drive::data::BlockStore<PgMetaStore>, PgMetaStore>;

async fn open(meta: &PgMetaStore, store: &Arc<dyn ChunkStore>, dir: &std::path::Path, tag: &str) -> Arc<Fs> {
    let target = MountTarget {
        workspace: "gc.test".into(),
        path: MountPath::Workspace("/".into()),
        snapshot: None,
    };
    let mut spec = MountSpec::new(target, dir.join(format!("staging-{tag}")));
    spec.create = Some(NewWorkspace {
        block_size: MIN_BLOCK_SIZE,
        encrypted: false,
    });
    mount::open(meta.clone(), store.clone(), &spec)
        .await
        .expect("open")
        .fs
}

async fn write(fs: &Fs, name: &str, data: &[u8]) {
    let flags = OpenFlags {
        read: true,
        write: true,
        truncate: true,
        ..OpenFlags::default()
    };
    let opened = match fs.lookup(ROOT_INO, name.as_bytes()).await {
        Ok(attr) => fs.open(fs.to_ino(attr.ino), flags, Caller::default()).await,
        Err(_) => {
            fs.create(ROOT_INO, name.as_bytes(), 0o644, flags, Caller::default())
                .await
        }
    }
    .expect("open for writing");
    fs.write(opened.fh, 0, data).await.expect("write");
    fs.flush(opened.fh, Caller::default()).await.expect("flush");
    fs.release(opened.fh, Caller::default()).await.expect("release");
}

async fn read(fs: &Fs, name: &str) -> Vec<u8> {
    let attr = fs.lookup(ROOT_INO, name.as_bytes()).await.expect("lookup");
    common::read_file(fs, fs.to_ino(attr.ino)).await.expect("read")
}

/// A workspace on real PostgreSQL with blocks in memory, and a mount of it.
struct Rig {
    meta: PgMetaStore,
    url: String,
    store: Arc<dyn ChunkStore>,
    dir: tempfile::TempDir,
    fs: Arc<Fs>,
}

impl Rig {
    async fn new() -> Rig {
        let (meta, url) = common::store_and_url().await;
        let store: Arc<dyn ChunkStore> = Arc::new(MemoryChunkStore::new());
        let dir = tempfile::tempdir().unwrap();
        let fs = open(&meta, &store, dir.path(), "a").await;
        Rig {
            meta,
            url,
            store,
            dir,
            fs,
        }
    }
}

fn content(seed: u8) -> Vec<u8> {
    (0..3 * MIN_BLOCK_SIZE as usize)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 24) as u8 ^ seed)
        .collect()
}

fn pass(id: &str, grace: Duration) -> BlockPassOptions {
    let mut o = BlockPassOptions::new(id);
    o.grace = grace;
    o.deletes_per_second = 100_000;
    o
}

async fn objects(store: &Arc<dyn ChunkStore>) -> usize {
    store.list("blocks/").await.expect("list").len()
}

/// Ages every block record by two hours, as if written long ago.
async fn age_blocks(url: &str) {
    let raw = common::raw_client(url).await;
    raw.execute("UPDATE blocks SET updated_at = now() - INTERVAL '2 hours'", &[])
        .await
        .expect("age blocks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwritten_blocks_are_swept_and_live_ones_kept_with_a_dry_run_first() {
    let Rig {
        meta,
        url,
        store,
        dir,
        fs,
    } = Rig::new().await;
    write(&fs, "shot.exr", &content(1)).await;
    write(&fs, "shot.exr", &content(2)).await;
    write(&fs, "kept.exr", &content(3)).await;
    assert_eq!(objects(&store).await, 9);
    age_blocks(&url).await;

    // Inside the grace period nothing is a candidate.
    let young = run_block_pass(
        &meta,
        store.as_ref(),
        &pass("young", Duration::from_secs(3 * 3600)),
    )
    .await
    .expect("pass");
    assert_eq!((young.candidates, young.deleted), (0, 0));

    let dry = run_block_pass(
        &meta,
        store.as_ref(),
        &BlockPassOptions {
            dry_run: true,
            ..pass("dry", Duration::from_secs(3600))
        },
    )
    .await
    .expect("dry run");
    assert_eq!(objects(&store).await, 9, "a dry run deletes nothing");
    assert_eq!(dry.candidates, 3, "{dry:?}");

    let real = run_block_pass(&meta, store.as_ref(), &pass("real", Duration::from_secs(3600)))
        .await
        .expect("pass");
    assert_eq!(
        real.deleted, dry.candidates,
        "the dry run predicted the real pass: {real:?}"
    );
    assert_eq!(objects(&store).await, 6);
    // Every live file reads back from a fresh mount (no caches).
    let fresh = open(&meta, &store, dir.path(), "b").await;
    assert_eq!(read(&fresh, "shot.exr").await, content(2));
    assert_eq!(read(&fresh, "kept.exr").await, content(3));
    // Running the finished pass again deletes nothing more.
    let again = run_block_pass(&meta, store.as_ref(), &pass("real", Duration::from_secs(3600)))
        .await
        .expect("rerun");
    assert_eq!(again.deleted, 0);
}

/// A writer that deduplicates against an old, unreferenced block touches it, so the pass that
/// follows keeps it; the file reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_a_writer_deduplicates_against_is_kept() {
    let Rig {
        meta,
        url,
        store,
        dir,
        fs,
    } = Rig::new().await;
    write(&fs, "a.exr", &content(1)).await;
    write(&fs, "a.exr", &content(2)).await;
    age_blocks(&url).await;
    // The old content again, in another file: every block deduplicates against an
    // unreferenced record while the file is written, and a pass runs before its commit.
    let flags = OpenFlags {
        read: true,
        write: true,
        ..OpenFlags::default()
    };
    let opened = fs
        .create(ROOT_INO, b"b.exr", 0o644, flags, Caller::default())
        .await
        .expect("create");
    fs.write(opened.fh, 0, &content(1)).await.expect("write");
    // Full blocks are uploaded (and registered) in the background while the file is open:
    // wait until the writer has registered all three.
    let raw = common::raw_client(&url).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let touched: i64 = raw
            .query_one(
                "SELECT count(*) FROM blocks WHERE updated_at > now() - INTERVAL '1 hour'",
                &[],
            )
            .await
            .expect("count")
            .get(0);
        if touched == 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the writer registered {touched} of 3 blocks"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = run_block_pass(&meta, store.as_ref(), &pass("p", Duration::from_secs(3600)))
        .await
        .expect("pass");
    fs.flush(opened.fh, Caller::default())
        .await
        .expect("the commit after the pass");
    fs.release(opened.fh, Caller::default()).await.expect("release");
    assert_eq!(report.deleted, 0, "{report:?}");
    let fresh = open(&meta, &store, dir.path(), "b").await;
    assert_eq!(read(&fresh, "b.exr").await, content(1));
}

/// Objects without a record are deleted only by a pass after the grace period since they were
/// first seen; a block a writer registers is never one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_swept_only_after_the_grace_period() {
    let Rig {
        meta,
        url,
        store,
        dir,
        fs,
    } = Rig::new().await;
    write(&fs, "a.exr", &content(1)).await;
    let orphan = drive::data::block_key(blake3::hash(b"never registered").as_bytes());
    store.put(&orphan, bytes::Bytes::from_static(b"x")).await.unwrap();
    let first = run_block_pass(&meta, store.as_ref(), &pass("o1", Duration::from_secs(3600)))
        .await
        .expect("pass");
    assert_eq!((first.orphans_seen, first.orphans_deleted), (1, 0));
    assert!(store.get(&orphan).await.is_ok(), "young orphans stay");
    let raw = common::raw_client(&url).await;
    raw.execute(
        "UPDATE gc_orphans SET first_seen = now() - INTERVAL '2 hours'",
        &[],
    )
    .await
    .unwrap();
    let second = run_block_pass(&meta, store.as_ref(), &pass("o2", Duration::from_secs(3600)))
        .await
        .expect("pass");
    assert_eq!(second.orphans_deleted, 1, "{second:?}");
    assert!(store.get(&orphan).await.is_err());
    let fresh = open(&meta, &store, dir.path(), "b").await;
    assert_eq!(read(&fresh, "a.exr").await, content(1));
}

/// A writer that meets a claim whose pass's lease ran out takes the block over and uploads it
/// again; the stalled pass then cannot forget it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_of_a_dead_pass_is_taken_over_by_a_writer() {
    let Rig {
        meta,
        url,
        store,
        dir,
        fs,
    } = Rig::new().await;
    write(&fs, "a.exr", &content(1)).await;
    write(&fs, "a.exr", &content(2)).await;
    age_blocks(&url).await;
    // A pass marks and claims every candidate, deletes their objects, then dies with its
    // lease expired before forgetting the records.
    let dead = "dead-pass";
    meta.gc_lease(drive::gc::BLOCK_SCOPE, dead, Duration::from_secs(60))
        .await
        .unwrap();
    let record = meta
        .gc_begin(dead, drive::gc::BLOCK_SCOPE, Duration::from_secs(3600), false)
        .await
        .unwrap();
    meta.gc_mark(dead, record.cutoff).await.unwrap();
    let candidates = meta.gc_candidates(dead, None, 100).await.unwrap();
    assert_eq!(candidates.len(), 3);
    for (hash, _) in &candidates {
        assert!(meta.gc_claim(dead, hash, record.cutoff).await.unwrap());
        store.delete(&drive::data::block_key(hash)).await.unwrap();
    }
    let raw = common::raw_client(&url).await;
    raw.execute(
        "UPDATE gc_leases SET expires_at = now() - INTERVAL '1 second'",
        &[],
    )
    .await
    .unwrap();
    // The old content again: the writer takes the claims over and uploads.
    write(&fs, "b.exr", &content(1)).await;
    for (hash, _) in &candidates {
        assert!(
            !meta.gc_forget(dead, hash).await.unwrap(),
            "the dead pass lost its claim"
        );
    }
    let fresh = open(&meta, &store, dir.path(), "b").await;
    assert_eq!(read(&fresh, "b.exr").await, content(1));
    assert_eq!(read(&fresh, "a.exr").await, content(2));
}
