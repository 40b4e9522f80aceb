//! Block garbage collection against real PostgreSQL and an in-memory object store or the
//! testkit's S3 server: what a pass deletes, what it must keep, dry runs, orphans, a writer
//! meeting a claim, the delete rate, the pause while the database is slow, and shards.

mod common;

use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::Ordering;

use drive::PgMetaStore;
use drive::data::{ChunkStore, MemoryChunkStore, S3ChunkStore, S3Config, S3Credentials};
use drive::fs::{Caller, DriveFs, OpenFlags, ROOT_INO};
use drive::gc::{BlockPassOptions, HashRange, PassReport, run_block_pass};
use drive::model::MIN_BLOCK_SIZE;
use drive::mount::{self, MountPath, MountSpec, MountTarget, NewWorkspace};
use drive_testkit::s3::{ACCESS_KEY, S3Server, SECRET_KEY};
use futures::StreamExt as _;

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

impl Rig {
    /// A rig whose one file was overwritten two hours ago (3 unreferenced blocks), with
    /// `blocks` more unreferenced blocks and `orphans` noted orphans planted ([`plant`]).
    async fn with_garbage(seed: &str, blocks: usize, orphans: usize) -> Rig {
        let rig = Rig::new().await;
        write(&rig.fs, "a.exr", &content(1)).await;
        write(&rig.fs, "a.exr", &content(2)).await;
        age_blocks(&rig.url).await;
        plant(&rig.url, rig.store.as_ref(), seed, blocks, orphans).await;
        rig
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
    // Running the finished pass again deletes nothing more, and reports its totals.
    let again = run_block_pass(&meta, store.as_ref(), &pass("real", Duration::from_secs(3600)))
        .await
        .expect("rerun");
    assert_eq!(objects(&store).await, 6);
    assert_eq!((again.candidates, again.deleted), (real.candidates, real.deleted));
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
    let no_report = |_: &_| serde_json::Value::Null;
    let mark = meta
        .gc_mark_batch(dead, record.cutoff, HashRange::ALL, None, 100, &no_report)
        .await
        .unwrap();
    assert!(mark.done);
    let candidates = meta.gc_candidates(dead, None, 100).await.unwrap();
    assert_eq!(candidates.len(), 3);
    let hashes: Vec<[u8; 32]> = candidates.iter().map(|(h, _)| *h).collect();
    let no_report = |_: &[([u8; 32], u64)]| serde_json::Value::Null;
    let claimed = meta
        .gc_claim_batch(dead, &hashes, record.cutoff, &no_report)
        .await
        .unwrap();
    assert_eq!(claimed, candidates);
    for hash in &hashes {
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
    let forgotten = meta
        .gc_forget(dead, &hashes, &[], &serde_json::Value::Null)
        .await
        .unwrap();
    assert_eq!(forgotten, 0, "the dead pass lost its claims");
    let fresh = open(&meta, &store, dir.path(), "b").await;
    assert_eq!(read(&fresh, "b.exr").await, content(1));
    assert_eq!(read(&fresh, "a.exr").await, content(2));
}

/// Plants `n` unreferenced blocks (records and 100-byte objects) last touched two hours ago,
/// and `orphans` objects without a record, first seen two hours ago; `seed` names them.
async fn plant(url: &str, store: &dyn ChunkStore, seed: &str, n: usize, orphans: usize) {
    let hash = |i: usize| *blake3::hash(format!("{seed}-{i}").as_bytes()).as_bytes();
    let garbage: Vec<Vec<u8>> = (0..n).map(|i| hash(i).to_vec()).collect();
    let orphan_keys: Vec<String> = (n..n + orphans)
        .map(|i| drive::data::block_key(&hash(i)))
        .collect();
    let keys = garbage
        .iter()
        .map(|h| drive::data::block_key(h.as_slice().try_into().unwrap()))
        .chain(orphan_keys.iter().cloned());
    futures::stream::iter(keys)
        .for_each_concurrent(16, |key| async move {
            store
                .put(&key, bytes::Bytes::from(vec![7u8; 100]))
                .await
                .expect("put");
        })
        .await;
    let raw = common::raw_client(url).await;
    raw.execute(
        "INSERT INTO blocks (hash, size, stored_size, state, updated_at) \
         SELECT h, 100, 100, 'available', now() - INTERVAL '2 hours' FROM unnest($1::BYTEA[]) AS h",
        &[&garbage],
    )
    .await
    .expect("plant block records");
    raw.execute(
        "INSERT INTO gc_orphans (key, first_seen) SELECT k, now() - INTERVAL '2 hours' FROM unnest($1::TEXT[]) AS k",
        &[&orphan_keys],
    )
    .await
    .expect("note orphans");
}

async fn sorted_objects(store: &dyn ChunkStore) -> Vec<String> {
    let mut keys = store.list("blocks/").await.expect("list");
    keys.sort();
    keys
}

/// Row counts of the tables a pass changes.
async fn row_counts(url: &str) -> Vec<i64> {
    let raw = common::raw_client(url).await;
    let mut counts = Vec::new();
    for table in ["blocks", "gc_candidates", "gc_orphans", "file_blocks"] {
        let n: i64 = raw
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .expect("count")
            .get(0);
        counts.push(n);
    }
    counts
}

fn s3_config(server: &S3Server) -> S3Config {
    let mut cfg = S3Config::new("gc-test").with_endpoint(server.endpoint());
    cfg.prefix = "ws".into();
    cfg.credentials = Some(S3Credentials {
        access_key_id: ACCESS_KEY.into(),
        secret_access_key: SECRET_KEY.into(),
        session_token: None,
    });
    cfg
}

async fn s3_store(server: &S3Server) -> Arc<dyn ChunkStore> {
    drive_testkit::install_crypto_provider();
    server.create_bucket("gc-test").unwrap();
    Arc::new(S3ChunkStore::connect(&s3_config(server)).await)
}

/// At N deletes a second the sweep deletes at N a second (within 10%), in batch requests of
/// one second's worth, through the S3 server; live files stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_keeps_to_its_delete_rate_in_batch_requests() {
    let server = S3Server::start().unwrap();
    let store = s3_store(&server).await;
    let (meta, url) = common::store_and_url().await;
    let dir = tempfile::tempdir().unwrap();
    let fs = open(&meta, &store, dir.path(), "a").await;
    write(&fs, "live.exr", &content(1)).await;
    plant(&url, store.as_ref(), "rate", 600, 0).await;
    let posts_before = server.requests().post.load(Ordering::Relaxed);
    let mut opts = pass("rate", Duration::from_secs(3600));
    opts.deletes_per_second = 200;
    let report = run_block_pass(&meta, store.as_ref(), &opts).await.expect("pass");
    assert_eq!(
        (report.candidates, report.deleted, report.errors),
        (600, 600, 0),
        "{report:?}"
    );
    assert_eq!(report.deleted_bytes, 600 * 100);
    let rate = report.deleted as f64 / (report.sweep_ms as f64 / 1000.0);
    eprintln!("measured {rate:.1} deletes/s at 200/s: {report:?}");
    assert!(
        (180.0..=220.0).contains(&rate),
        "measured {rate:.1} deletes/s at 200/s"
    );
    assert!(report.throttle_waits >= 3, "{report:?}");
    // 600 keys in requests of one second's worth (200): three DeleteObjects POSTs.
    let posts = server.requests().post.load(Ordering::Relaxed) - posts_before;
    assert_eq!(posts, 3, "batch delete requests");
    assert_eq!(objects(&store).await, 3, "only the live file's blocks are left");
    let fresh = open(&meta, &store, dir.path(), "b").await;
    assert_eq!(read(&fresh, "live.exr").await, content(1));
}

/// With the pass's claim and forget transactions slowed down in the database (triggers that
/// sleep), the pass pauses, doubling, and its report says so; it still finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_database_pauses_the_pass_and_its_report_says_so() {
    let Rig { meta, url, store, .. } = Rig::new().await;
    plant(&url, store.as_ref(), "slow", 30, 0).await;
    let raw = common::raw_client(&url).await;
    raw.batch_execute(
        "CREATE FUNCTION slow_down() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_sleep(0.3); RETURN NULL; END $$; \
         CREATE TRIGGER slow_claims BEFORE DELETE ON gc_candidates \
         FOR EACH STATEMENT EXECUTE FUNCTION slow_down(); \
         CREATE TRIGGER slow_forgets BEFORE DELETE ON blocks \
         FOR EACH STATEMENT EXECUTE FUNCTION slow_down();",
    )
    .await
    .expect("slow the claims down");
    let mut opts = pass("slow", Duration::from_secs(3600));
    opts.batch = 15;
    opts.backoff_latency = Duration::from_millis(100);
    let report = run_block_pass(&meta, store.as_ref(), &opts).await.expect("pass");
    assert_eq!(report.deleted, 30, "{report:?}");
    // Two batches of a slow claim and a slow forget each, in a row: pauses of 100, 200, 400
    // and 800 ms.
    assert!(report.backoff_pauses >= 4, "{report:?}");
    assert!(report.backoff_ms >= 1500, "{report:?}");
    let saved: PassReport = serde_json::from_value(
        meta.gc_block_report("slow")
            .await
            .unwrap()
            .expect("a saved report"),
    )
    .unwrap();
    assert_eq!(saved, report, "the saved report is the one returned");
}

/// N shards of a pass, run side by side, delete exactly what one pass deletes on the same
/// data (blocks and orphans), each in its own range; mark runs in many small batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_together_delete_what_one_pass_deletes() {
    let mut outcomes = Vec::new();
    for shards in [None, Some(4u32)] {
        let rig = Rig::with_garbage("shards", 200, 40).await;
        let (meta, store) = (&rig.meta, &rig.store);
        let mut opts = pass("sharded", Duration::from_secs(3600));
        opts.mark_batch = 7;
        opts.batch = 16;
        let reports: Vec<PassReport> = match shards {
            None => vec![run_block_pass(meta, store.as_ref(), &opts).await.expect("pass")],
            Some(n) => {
                let runs = (0..n).map(|i| {
                    let opts = BlockPassOptions {
                        shard: Some((i, n)),
                        ..opts.clone()
                    };
                    async move { run_block_pass(meta, store.as_ref(), &opts).await.expect("shard") }
                });
                futures::future::join_all(runs).await
            }
        };
        let sum = |f: fn(&PassReport) -> u64| reports.iter().map(f).sum::<u64>();
        let totals = [
            sum(|r| r.candidates),
            sum(|r| r.deleted),
            sum(|r| r.deleted_bytes),
            sum(|r| r.orphans_seen),
            sum(|r| r.orphans_deleted),
        ];
        if shards.is_some() {
            assert!(
                reports.iter().all(|r| r.deleted > 0),
                "every shard has work: {reports:?}"
            );
            assert_eq!(reports[3].shard.as_deref(), Some("3-of-4"));
        }
        outcomes.push((totals, sorted_objects(store.as_ref()).await));
    }
    let [candidates, deleted, _, orphans_seen, orphans_deleted] = outcomes[0].0;
    assert_eq!(
        [candidates, deleted, orphans_seen, orphans_deleted],
        [203, 203, 40, 40]
    );
    assert_eq!(outcomes[0], outcomes[1], "one pass and four shards");
}

/// A dry run changes no row and no object, and counts what the real pass then deletes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_changes_nothing_and_predicts_the_real_pass() {
    let rig = Rig::with_garbage("dry", 50, 5).await;
    let (meta, url, store) = (&rig.meta, &rig.url, &rig.store);
    let (rows, objects_before) = (row_counts(url).await, sorted_objects(store.as_ref()).await);
    let mut opts = pass("dry", Duration::from_secs(3600));
    opts.dry_run = true;
    opts.mark_batch = 9;
    let dry = run_block_pass(meta, store.as_ref(), &opts)
        .await
        .expect("dry run");
    assert_eq!(row_counts(url).await, rows, "a dry run changes no row");
    assert_eq!(sorted_objects(store.as_ref()).await, objects_before);
    let real = run_block_pass(meta, store.as_ref(), &pass("real", Duration::from_secs(3600)))
        .await
        .expect("pass");
    assert_eq!(
        (dry.candidates, dry.candidate_bytes, dry.orphans_seen),
        (real.deleted, real.deleted_bytes, real.orphans_deleted),
        "dry {dry:?}, real {real:?}"
    );
    assert_eq!(real.deleted, 53);
    assert_eq!(
        sorted_objects(store.as_ref()).await.len(),
        objects_before.len() - 53 - 5
    );
}

/// A paged listing, page by page, is the whole listing in key order, on every store; keys
/// that sort between a directory's name and its contents ('-' < '/') come in their place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_listings_are_the_listing_in_key_order_on_every_store() {
    let server = S3Server::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stores: Vec<Arc<dyn ChunkStore>> = vec![
        Arc::new(MemoryChunkStore::new()),
        Arc::new(drive::data::LocalChunkStore::open(dir.path()).unwrap()),
        s3_store(&server).await,
    ];
    let mut keys: Vec<String> = (0..20u32)
        .map(|i| drive::data::block_key(blake3::hash(&i.to_le_bytes()).as_bytes()))
        .chain(["blocks/a-b", "blocks/a/x", "blocks/a/y", "blocks/b", "other/z"].map(String::from))
        .collect();
    for store in &stores {
        for key in &keys {
            store.put(key, bytes::Bytes::from(key.clone())).await.unwrap();
        }
    }
    keys.retain(|k| k.starts_with("blocks/"));
    keys.sort();
    for store in &stores {
        for limit in [1, 3, 1000] {
            let (mut listed, mut after) = (Vec::new(), None::<String>);
            loop {
                let page = store.list_page("blocks/", after.as_deref(), limit).await.unwrap();
                assert!(page.len() <= limit);
                let Some(last) = page.last() else { break };
                after = Some(last.key.clone());
                for o in page {
                    assert_eq!(
                        o.size,
                        o.key.len() as u64,
                        "{}: size of {}",
                        store.describe(),
                        o.key
                    );
                    listed.push(o.key);
                }
            }
            assert_eq!(listed, keys, "{} in pages of {limit}", store.describe());
        }
    }
}

/// A pass whose delete requests fail stops with the error, keeps its claims, and its rerun
/// finishes them: the same totals as a pass that never failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_whose_deletes_failed_finishes_on_its_rerun() {
    let rig = Rig::with_garbage("failing", 40, 0).await;
    let faulty = drive::data::FaultyChunkStore::new(rig.store.clone());
    faulty.set(drive::data::StoreOp::Delete, drive::data::StoreFault::Unavailable);
    let mut opts = pass("failing", Duration::from_secs(3600));
    opts.batch = 10;
    let failed = run_block_pass(&rig.meta, &faulty, &opts).await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(objects(&rig.store).await, 43 + 3, "nothing was deleted");
    faulty.clear();
    let report = run_block_pass(&rig.meta, &faulty, &opts).await.expect("rerun");
    assert_eq!((report.candidates, report.deleted), (43, 43), "{report:?}");
    assert_eq!(objects(&rig.store).await, 3, "the live file's blocks");
    let fresh = open(&rig.meta, &rig.store, rig.dir.path(), "b").await;
    assert_eq!(read(&fresh, "a.exr").await, content(2));
}

/// Objects a batch delete reports as failed stay claimed and count as errors, while the rest
/// of the batch goes; a rerun of the pass deletes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_fail_to_delete_stay_claimed_and_count_as_errors() {
    let rig = Rig::with_garbage("per-key", 20, 0).await;
    let faulty = drive::data::FaultyChunkStore::new(rig.store.clone());
    let mut keys = sorted_objects(rig.store.as_ref()).await;
    let raw = common::raw_client(&rig.url).await;
    let live_keys: Vec<String> = raw
        .query(
            "SELECT encode(hash, 'hex') FROM file_blocks WHERE valid_to IS NULL",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let hex: String = r.get(0);
            format!("blocks/{}/{hex}", &hex[..2])
        })
        .collect();
    keys.retain(|k| !live_keys.contains(k));
    assert_eq!(keys.len(), 23, "garbage objects");
    faulty.refuse_deletes_of(keys[..2].iter().cloned());
    let opts = pass("per-key", Duration::from_secs(3600));
    let report = run_block_pass(&rig.meta, &faulty, &opts).await.expect("pass");
    assert_eq!((report.deleted, report.errors), (21, 2), "{report:?}");
    assert_eq!(sorted_objects(rig.store.as_ref()).await.len(), 3 + 2);
    faulty.clear();
    let rerun = run_block_pass(&rig.meta, &faulty, &opts).await.expect("rerun");
    assert_eq!((rerun.deleted, rerun.errors), (23, 2), "{rerun:?}");
    assert_eq!(objects(&rig.store).await, 3, "the live file's blocks");
}

// Benchmarks (scripts/bench-gc.sh; figures in docs/benchmarks.md). Ignored: they print
// figures and assert only on content.

/// Mark over 1M blocks and 10M block-map rows generated in SQL: the time, the batches'
/// transaction times and the database's CPU seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: scripts/bench-gc.sh"]
async fn bench_mark() {
    let blocks: i64 = std::env::var("GC_BENCH_BLOCKS").map_or(1_000_000, |v| v.parse().unwrap());
    let rows: i64 = std::env::var("GC_BENCH_ROWS").map_or(10_000_000, |v| v.parse().unwrap());
    let garbage = blocks / 10;
    let (meta, url) = common::store_and_url().await;
    let raw = common::raw_client(&url).await;
    let started = std::time::Instant::now();
    raw.batch_execute(&format!(
        "INSERT INTO blocks (hash, size, stored_size, state, updated_at) \
         SELECT sha256(int8send(n)), 65536, 65536, 'available', now() - INTERVAL '2 hours' \
         FROM generate_series(1, {blocks}) AS n; \
         INSERT INTO file_blocks (ino, idx, valid_from, hash, len) \
         SELECT n / 1000, n % 1000, 1, sha256(int8send(1 + n % {live})), 65536 \
         FROM generate_series(0, {rows} - 1) AS n; \
         ANALYZE blocks; ANALYZE file_blocks;",
        live = blocks - garbage
    ))
    .await
    .expect("generate rows");
    eprintln!(
        "generated {blocks} blocks and {rows} block-map rows in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let pg = drive_testkit::pg::PgServer::shared();
    let record = meta
        .gc_begin("bench", drive::gc::BLOCK_SCOPE, Duration::from_secs(3600), false)
        .await
        .unwrap();
    let cpu_before = pg.cpu_seconds().unwrap();
    let started = std::time::Instant::now();
    let (mut after, mut found, mut batches, mut slowest) = (None, 0, 0, Duration::ZERO);
    let no_report = |_: &_| serde_json::Value::Null;
    loop {
        let t = std::time::Instant::now();
        let batch = meta
            .gc_mark_batch("bench", record.cutoff, HashRange::ALL, after, 10_000, &no_report)
            .await
            .expect("mark");
        slowest = slowest.max(t.elapsed());
        batches += 1;
        found += batch.candidates;
        if batch.done {
            break;
        }
        after = batch.last;
    }
    let took = started.elapsed();
    let cpu = pg.cpu_seconds().unwrap() - cpu_before;
    assert_eq!(
        found, garbage as u64,
        "mark finds exactly the unreferenced blocks"
    );
    eprintln!(
        "mark: {blocks} blocks, {rows} rows: {:.1} s in {batches} transactions (slowest {} ms), \
         {found} candidates, database CPU {cpu:.1} s",
        took.as_secs_f64(),
        slowest.as_millis()
    );
}

/// Unthrottled sweep against the testkit S3 server: deletes per second with batch deletes
/// (1,000 keys a request) and one by one (a claim, a delete and a forget per object), A B A B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: scripts/bench-gc.sh"]
async fn bench_sweep() {
    let n: usize = std::env::var("GC_BENCH_OBJECTS").map_or(5_000, |v| v.parse().unwrap());
    let server = S3Server::start().unwrap();
    let store = s3_store(&server).await;
    for round in 0..4 {
        let one_by_one = round % 2 == 1;
        let (meta, url) = common::store_and_url().await;
        plant(&url, store.as_ref(), &format!("bench-{round}"), n, 0).await;
        let mut opts = pass(&format!("bench-{round}"), Duration::from_secs(3600));
        opts.batch = if one_by_one { 1 } else { 1000 };
        let report = run_block_pass(&meta, store.as_ref(), &opts).await.expect("pass");
        assert_eq!(report.deleted, n as u64);
        eprintln!(
            "sweep {}: {n} objects in {} ms: {:.0} deletes/s",
            if one_by_one { "one by one" } else { "batched" },
            report.sweep_ms,
            n as f64 / (report.sweep_ms as f64 / 1000.0)
        );
    }
    assert_eq!(objects(&store).await, 0);
}

/// A write session keeps no copy of the blocks it built in memory, so it renews their records
/// while it is open (`BlockIo::renew_blocks`): a renewed record is younger than the grace
/// period and no pass takes it; a record a pass did take is reported gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_block_records_outlive_a_pass_and_swept_ones_are_reported_gone() {
    let Rig { meta, url, store, .. } = Rig::new().await;
    let blocks = drive::data::BlockStore::new(
        meta.clone(),
        store.clone(),
        drive::data::BlockCodec::plaintext(),
        None,
    );
    let hash = blocks.put(bytes::Bytes::from(content(5))).await.expect("put");
    let never = [0x5a; 32];
    age_blocks(&url).await;
    assert_eq!(
        meta.renew_blocks(&[hash, never]).await.expect("renew"),
        vec![never]
    );
    let kept = run_block_pass(&meta, store.as_ref(), &pass("renewed", Duration::from_secs(3600)))
        .await
        .expect("pass");
    assert_eq!(
        (kept.candidates, kept.deleted),
        (0, 0),
        "a renewed record was taken"
    );

    age_blocks(&url).await;
    let swept = run_block_pass(&meta, store.as_ref(), &pass("aged", Duration::from_secs(3600)))
        .await
        .expect("pass");
    assert_eq!(swept.deleted, 1, "{swept:?}");
    assert_eq!(meta.renew_blocks(&[hash]).await.expect("renew"), vec![hash]);
}

/// Blocks an open file built in memory and a pass then swept cannot be stored again: the close
/// fails, and the file is not committed with blocks that are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_whose_memory_blocks_were_swept_fails_instead_of_committing_them() {
    let Rig {
        meta,
        url,
        store,
        fs,
        dir: _dir,
    } = Rig::new().await;
    let flags = OpenFlags {
        read: true,
        write: true,
        ..OpenFlags::default()
    };
    let opened = fs
        .create(ROOT_INO, b"long-take.mov", 0o644, flags, Caller::default())
        .await
        .expect("create");
    fs.write(opened.fh, 0, &content(6)).await.expect("write");
    // A read of the written blocks waits for their uploads.
    let all = content(6).len() as u32;
    assert!(fs.read(opened.fh, 0, all).await.expect("read").to_vec() == content(6));
    age_blocks(&url).await;
    let swept = run_block_pass(&meta, store.as_ref(), &pass("swept", Duration::from_secs(3600)))
        .await
        .expect("pass");
    assert_eq!(swept.deleted, 3, "{swept:?}");
    let closed = fs.flush(opened.fh, Caller::default()).await;
    assert_eq!(
        closed.map_err(|e| e.kind()).err(),
        Some(drive::fs::FsErrorKind::Io)
    );
    let _ = fs.release(opened.fh, Caller::default()).await;
    assert!(
        fs.lookup(ROOT_INO, b"long-take.mov").await.is_err(),
        "a file whose blocks are gone was committed"
    );
}
