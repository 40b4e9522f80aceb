//! Lifecycle passes against real PostgreSQL and an in-memory object store: the trash, the
//! purge of deleted data and of history no retained snapshot shows, snapshot retention, and
//! a reference model that interleaves random workloads with passes and injected crashes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use drive::PgMetaStore;
use drive::data::{ChunkStore, FaultyChunkStore, MemoryChunkStore, StoreFault, StoreOp};
use drive::fs::{Caller, DriveFs, OpenFlags, ROOT_INO};
use drive::gc::BlockPassOptions;
use drive::lifecycle::{LifecycleOptions, LifecycleReport, run_pass};
use drive::model::{MIN_BLOCK_SIZE, MergeMode, View};
use drive::mount::{self, MountPath, MountSpec, MountTarget, NewWorkspace};
use drive::rules::gc::{RetentionClass, SnapshotRetention};

type Fs = DriveFs<drive::data::BlockStore<PgMetaStore>, PgMetaStore>;

struct Rig {
    meta: PgMetaStore,
    url: String,
    store: Arc<FaultyChunkStore>,
    dir: tempfile::TempDir,
    mounts: std::sync::atomic::AtomicU64,
}

impl Rig {
    async fn new() -> Rig {
        let (meta, url) = common::store_and_url().await;
        let inner: Arc<dyn ChunkStore> = Arc::new(MemoryChunkStore::new());
        Rig {
            meta,
            url,
            store: Arc::new(FaultyChunkStore::new(inner)),
            dir: tempfile::tempdir().unwrap(),
            mounts: Default::default(),
        }
    }

    /// A fresh mount (no caches carried over) of `workspace`, or of one of its snapshots.
    async fn mount(&self, workspace: &str, snapshot: Option<&str>) -> Arc<Fs> {
        let n = self.mounts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let target = MountTarget {
            workspace: workspace.into(),
            path: MountPath::Workspace("/".into()),
            snapshot: snapshot.map(Into::into),
        };
        let mut spec = MountSpec::new(target, self.dir.path().join(format!("staging-{n}")));
        if snapshot.is_none() {
            spec.create = Some(NewWorkspace {
                block_size: MIN_BLOCK_SIZE,
                encrypted: false,
            });
        }
        let store: Arc<dyn ChunkStore> = self.store.clone();
        mount::open(self.meta.clone(), store, &spec)
            .await
            .expect("mount")
            .fs
    }

    async fn ws(&self, name: &str) -> drive::model::Workspace {
        self.meta.get_workspace(name).await.expect("workspace")
    }

    async fn objects(&self) -> BTreeSet<String> {
        self.store
            .list("blocks/")
            .await
            .expect("list")
            .into_iter()
            .collect()
    }
}

/// Writes `data` at `path` ("/a/b.exr"), creating its folder.
async fn write(fs: &Fs, path: &str, data: &[u8]) {
    let (dir, name) = path
        .trim_start_matches('/')
        .rsplit_once('/')
        .unwrap_or(("", path.trim_start_matches('/')));
    let mut parent = ROOT_INO;
    for folder in dir.split('/').filter(|s| !s.is_empty()) {
        parent = match fs.lookup(parent, folder.as_bytes()).await {
            Ok(a) => fs.to_ino(a.ino),
            Err(_) => fs.to_ino(
                fs.mkdir(parent, folder.as_bytes(), 0o755, Caller::default())
                    .await
                    .expect("mkdir")
                    .ino,
            ),
        };
    }
    let flags = OpenFlags {
        read: true,
        write: true,
        truncate: true,
        ..OpenFlags::default()
    };
    let opened = match fs.lookup(parent, name.as_bytes()).await {
        Ok(a) => fs.open(fs.to_ino(a.ino), flags, Caller::default()).await,
        Err(_) => {
            fs.create(parent, name.as_bytes(), 0o644, flags, Caller::default())
                .await
        }
    }
    .expect("open for writing");
    fs.write(opened.fh, 0, data).await.expect("write");
    fs.flush(opened.fh, Caller::default()).await.expect("flush");
    fs.release(opened.fh, Caller::default()).await.expect("release");
}

async fn read(fs: &Fs, path: &str) -> Vec<u8> {
    let mut at = ROOT_INO;
    for part in path.split('/').filter(|s| !s.is_empty()) {
        at = fs.to_ino(
            fs.lookup(at, part.as_bytes())
                .await
                .unwrap_or_else(|e| panic!("lookup {path}: {e}"))
                .ino,
        );
    }
    common::read_file(fs, at)
        .await
        .unwrap_or_else(|e| panic!("read {path}: {}", common::error_chain(&e)))
}

/// Content from a small pool, so that files share blocks (dedup) across the workload.
fn content(seed: u64) -> Vec<u8> {
    let blocks = 1 + (seed % 3) as usize;
    (0..blocks * MIN_BLOCK_SIZE as usize)
        .map(|i| ((i as u64).wrapping_mul(2_654_435_761) >> 20) as u8 ^ (seed as u8))
        .collect()
}

fn options(pass_id: &str, keep_last: Option<u32>) -> LifecycleOptions {
    let mut blocks = BlockPassOptions::new(pass_id);
    blocks.grace = Duration::ZERO;
    blocks.deletes_per_second = 100_000;
    let mut opts = LifecycleOptions::blocks_only(blocks);
    opts.retention = vec![RetentionClass::days(0)];
    opts.snapshots = SnapshotRetention {
        keep_last,
        max_age: None,
    };
    opts
}

async fn pass(rig: &Rig, opts: &LifecycleOptions) -> LifecycleReport {
    run_pass(&rig.meta, rig.store.as_ref(), opts)
        .await
        .unwrap_or_else(|e| panic!("pass {}: {e}", opts.blocks.pass_id))
}

/// Hashes of the blocks some remaining block-map row references.
async fn referenced(url: &str) -> BTreeSet<String> {
    let raw = common::raw_client(url).await;
    raw.query("SELECT DISTINCT hash FROM file_blocks", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| drive::data::block_key(&r.get::<_, Vec<u8>>(0).try_into().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_folder_is_listed_restored_with_merge_modes_and_purged_after_its_retention() {
    let rig = Rig::new().await;
    let fs = rig.mount("trash.test", None).await;
    write(&fs, "/shots/a.exr", &content(1)).await;
    write(&fs, "/shots/b.exr", &content(2)).await;
    let ws = rig.ws("trash.test").await;
    let actor = common::actor();
    rig.meta.delete_path(&actor, ws.id, "/shots").await.unwrap();

    let trash = rig.meta.trash_list(ws.id, None, 10).await.unwrap();
    assert_eq!(trash.len(), 1, "{trash:?}");
    assert_eq!(
        (trash[0].path.as_deref(), trash[0].kind),
        (Some("/shots"), "folder")
    );
    assert!(
        rig.meta
            .trash_list(ws.id, Some("/other"), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Something new took the name meanwhile: Fail refuses and writes nothing; Skip keeps it.
    let fs = rig.mount("trash.test", None).await;
    write(&fs, "/shots/a.exr", &content(9)).await;
    let err = rig
        .meta
        .trash_restore(&actor, ws.id, trash[0].id, None, MergeMode::Fail)
        .await
        .unwrap_err();
    assert!(matches!(err, drive::MetaError::Exists(_)), "{err}");
    assert_eq!(
        rig.meta.trash_list(ws.id, None, 10).await.unwrap().len(),
        1,
        "still in the trash"
    );
    let report = rig
        .meta
        .trash_restore(&actor, ws.id, trash[0].id, None, MergeMode::Skip)
        .await
        .unwrap();
    assert_eq!((report.copied, report.skipped), (1, 1), "{report:?}");
    let fs = rig.mount("trash.test", None).await;
    assert_eq!(
        read(&fs, "/shots/a.exr").await,
        content(9),
        "Skip kept the newer file"
    );
    assert_eq!(
        read(&fs, "/shots/b.exr").await,
        content(2),
        "the deleted one came back"
    );
    assert!(
        rig.meta.trash_list(ws.id, None, 10).await.unwrap().is_empty(),
        "restored items leave the trash"
    );

    // A second deletion, restored elsewhere.
    rig.meta.delete_path(&actor, ws.id, "/shots/b.exr").await.unwrap();
    let item = rig.meta.trash_list(ws.id, None, 10).await.unwrap().remove(0);
    assert_eq!(item.path.as_deref(), Some("/shots/b.exr"));
    assert_eq!(item.size, content(2).len() as u64);
    rig.meta
        .trash_restore(&actor, ws.id, item.id, Some("/restored.exr"), MergeMode::Fail)
        .await
        .unwrap();
    assert_eq!(
        read(&*rig.mount("trash.test", None).await, "/restored.exr").await,
        content(2)
    );

    // A week's retention keeps a fresh deletion; zero retention purges it, and its blocks
    // go once nothing references them.
    rig.meta.delete_path(&actor, ws.id, "/shots").await.unwrap();
    let mut week = options("week", None);
    week.retention = vec![RetentionClass::days(7)];
    let kept = pass(&rig, &week).await;
    assert_eq!(kept.purged_entries, 0, "{kept:?}");
    assert_eq!(rig.meta.trash_list(ws.id, None, 10).await.unwrap().len(), 1);
    let before = rig.objects().await;
    let purged = pass(&rig, &options("now", None)).await;
    assert_eq!(purged.purged_entries, 1, "{purged:?}");
    assert_eq!(
        purged.purged_nodes, 2,
        "the folder and the file left in it: {purged:?}"
    );
    assert!(rig.meta.trash_list(ws.id, None, 10).await.unwrap().is_empty());
    let after = rig.objects().await;
    assert!(
        after.len() < before.len(),
        "blocks of the purged files were swept"
    );
    assert_eq!(
        after,
        referenced(&rig.url).await,
        "no object without a reference, none missing"
    );
    assert_eq!(
        read(&*rig.mount("trash.test", None).await, "/restored.exr").await,
        content(2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_snapshot_keeps_deleted_data_until_retention_releases_it() {
    let rig = Rig::new().await;
    let fs = rig.mount("snap.test", None).await;
    write(&fs, "/plate.exr", &content(4)).await;
    let ws = rig.ws("snap.test").await;
    let actor = common::actor();
    rig.meta
        .create_snapshot(&actor, ws.id, "daily-1", "/")
        .await
        .unwrap();
    rig.meta.delete_path(&actor, ws.id, "/plate.exr").await.unwrap();
    let fs = rig.mount("snap.test", None).await;
    write(&fs, "/other.exr", &content(5)).await;
    rig.meta
        .create_snapshot(&actor, ws.id, "daily-2", "/")
        .await
        .unwrap();

    // Both snapshots kept: the deleted file's entry is shown by daily-1, so it stays.
    let first = pass(&rig, &options("keep", None)).await;
    assert_eq!(
        (first.purged_entries, first.snapshots_released),
        (0, 0),
        "{first:?}"
    );
    let snap = rig.mount("snap.test", Some("daily-1")).await;
    assert_eq!(read(&snap, "/plate.exr").await, content(4));

    // Keep the newest only: daily-1 is released, then the file is purged and its blocks go.
    let second = pass(&rig, &options("release", Some(1))).await;
    assert_eq!(second.snapshots_released, 1, "{second:?}");
    assert_eq!(second.purged_entries, 1, "{second:?}");
    let names: Vec<String> = rig
        .meta
        .list_snapshots(ws.id)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, vec!["daily-2".to_string()]);
    assert_eq!(rig.objects().await, referenced(&rig.url).await);
    assert_eq!(
        read(&*rig.mount("snap.test", Some("daily-2")).await, "/other.exr").await,
        content(5)
    );
}

/// The reference model: live files and retained snapshots as path -> content.
#[derive(Default)]
struct Model {
    live: BTreeMap<String, Vec<u8>>,
    /// Deleted items still in the trash: (path, files under it with their content).
    trash: Vec<(String, BTreeMap<String, Vec<u8>>)>,
    snapshots: Vec<(String, BTreeMap<String, Vec<u8>>)>,
}

impl Model {
    fn under(&self, path: &str) -> BTreeMap<String, Vec<u8>> {
        self.live
            .iter()
            .filter(|(p, _)| *p == path || p.starts_with(&format!("{path}/")))
            .map(|(p, c)| (p.clone(), c.clone()))
            .collect()
    }
}

/// A small deterministic generator (no dependency, same run every time for a seed).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

async fn check(rig: &Rig, model: &Model, when: &str) {
    let fs = rig.mount("model.a", None).await;
    for (path, data) in &model.live {
        assert!(
            read(&fs, path).await == *data,
            "{when}: live {path} differs from the model"
        );
    }
    for (name, files) in &model.snapshots {
        let snap = rig.mount("model.a", Some(name)).await;
        for (path, data) in files {
            assert!(
                read(&snap, path).await == *data,
                "{when}: snapshot {name} {path} differs"
            );
        }
    }
    // Every object a remaining row references is in the store.
    let objects = rig.objects().await;
    let missing: Vec<_> = referenced(&rig.url).await.difference(&objects).cloned().collect();
    assert!(
        missing.is_empty(),
        "{when}: referenced blocks missing from the store: {missing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_workloads_with_passes_and_crashes_never_lose_live_or_retained_data() {
    let rig = Rig::new().await;
    let actor = common::actor();
    let mut model = Model::default();
    let mut rng = Lcg(17);
    // A second workspace shares content (dedup) and is deleted whole: the blocks it shares
    // with model.a must survive its purge.
    let other = rig.mount("model.b", None).await;
    for i in 0..4 {
        write(&other, &format!("/b/{i}.exr"), &content(i)).await;
    }
    rig.meta.delete_workspace(&actor, "model.b").await.unwrap();
    rig.mount("model.a", None).await;
    let ws = rig.ws("model.a").await;
    let mut passes = 0;
    for step in 0..70 {
        let folder = format!("/d{}", rng.next(3));
        let path = format!("{folder}/f{}.exr", rng.next(4));
        match rng.next(10) {
            0..=2 => {
                let data = content(rng.next(6));
                write(&*rig.mount("model.a", None).await, &path, &data).await;
                model.live.insert(path, data);
            }
            3 => {
                let Some((src, data)) = model.live.iter().next().map(|(p, d)| (p.clone(), d.clone())) else {
                    continue;
                };
                let dst = format!("{folder}/copy{}.exr", rng.next(3));
                if model.live.contains_key(&dst)
                    || !model.live.keys().any(|p| p.starts_with(&format!("{folder}/")))
                {
                    continue;
                }
                let src_ino = rig.meta.resolve(ws.id, &src).await.unwrap().ino;
                let parent = rig.meta.resolve(ws.id, &folder).await.unwrap().ino;
                rig.meta
                    .copy(
                        &actor,
                        ws.id,
                        View::Live,
                        src_ino,
                        parent,
                        &common::name(dst.rsplit('/').next().unwrap()),
                        MergeMode::Fail,
                    )
                    .await
                    .unwrap();
                model.live.insert(dst, data);
            }
            4 => {
                let target = if rng.next(2) == 0 {
                    path.clone()
                } else {
                    folder.clone()
                };
                let files = model.under(&target);
                if files.is_empty() {
                    continue;
                }
                rig.meta.delete_path(&actor, ws.id, &target).await.unwrap();
                // A deleted folder's own (now empty) siblings may still exist: the model keeps
                // files only, so an emptied folder is recreated by the next write.
                model.live.retain(|p, _| !files.contains_key(p));
                model.trash.push((target, files));
            }
            5 => {
                // Restore the newest deletion to its place when nothing is there now. (Items a
                // retained snapshot still shows outlive passes in the trash; the model forgets
                // them, so it looks its own newest item up by path.)
                let Some((path, _)) = model.trash.last() else {
                    continue;
                };
                let items = rig.meta.trash_list(ws.id, None, 50).await.unwrap();
                let item = items
                    .iter()
                    .find(|i| i.path.as_deref() == Some(path.as_str()))
                    .unwrap_or_else(|| panic!("step {step}: {path} is not in the trash: {items:?}"));
                let parent = path.rsplit_once('/').map_or("", |(d, _)| d);
                let parent_lives = parent.is_empty() || rig.meta.resolve(ws.id, parent).await.is_ok();
                if !parent_lives || rig.meta.resolve(ws.id, path).await.is_ok() {
                    continue;
                }
                rig.meta
                    .trash_restore(&actor, ws.id, item.id, None, MergeMode::Fail)
                    .await
                    .unwrap();
                let (_, files) = model.trash.pop().expect("the item just restored");
                model.live.extend(files);
            }
            6 => {
                let name = format!("s{step}");
                rig.meta.create_snapshot(&actor, ws.id, &name, "/").await.unwrap();
                model.snapshots.push((name, model.live.clone()));
            }
            7 => {
                // A crash between mark and sweep: every delete fails, then the same pass id
                // runs again and finishes.
                passes += 1;
                let id = format!("crash-{passes}");
                rig.store.set(StoreOp::Delete, StoreFault::Unavailable);
                // (When nothing is due for deletion the first run simply succeeds.)
                let _ = run_pass(&rig.meta, rig.store.as_ref(), &options(&id, Some(3))).await;
                rig.store.clear();
                pass(&rig, &options(&id, Some(3))).await;
                model.trash.clear();
                let keep = model.snapshots.len().saturating_sub(3);
                model.snapshots.drain(..keep);
                check(&rig, &model, &format!("step {step} after resumed pass {id}")).await;
            }
            8 => {
                // A crash inside the purge: entries purged, their nodes left queued.
                let ws_now = rig.ws("model.a").await;
                rig.meta
                    .purge_trash(
                        ws.id,
                        ws_now.root,
                        ws_now.kind,
                        &[RetentionClass::days(0)],
                        rig.meta.gc_now().await.unwrap(),
                        std::time::SystemTime::now(),
                        false,
                        drive::meta::PurgePace::FULL_SPEED,
                    )
                    .await
                    .unwrap();
                // What the trash showed is gone unless a retained snapshot still shows it.
                model.trash.clear();
                check(&rig, &model, &format!("step {step} after a partial purge")).await;
            }
            _ => {
                passes += 1;
                pass(&rig, &options(&format!("p{passes}"), Some(3))).await;
                model.trash.clear();
                let keep = model.snapshots.len().saturating_sub(3);
                model.snapshots.drain(..keep);
                check(&rig, &model, &format!("step {step} after pass p{passes}")).await;
            }
        }
    }
    // The end: every snapshot released, zero retention, zero grace: no object is left that
    // nothing references, and everything live still reads back.
    pass(&rig, &options("final", Some(0))).await;
    model.snapshots.clear();
    model.trash.clear();
    check(&rig, &model, "final pass").await;
    assert!(passes > 3, "the workload ran passes: {passes}");
    let raw = common::raw_client(&rig.url).await;
    let deleted_ws: i64 = raw
        .query_one(
            "SELECT count(*) FROM workspaces WHERE deleted_at IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(deleted_ws, 0, "the deleted workspace was purged");
    let history: i64 = raw
        .query_one(
            "SELECT (SELECT count(*) FROM entries WHERE valid_to IS NOT NULL) + \
             (SELECT count(*) FROM inodes WHERE valid_to IS NOT NULL) + \
             (SELECT count(*) FROM file_blocks WHERE valid_to IS NOT NULL)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(history, 0, "no history row survives without a snapshot");
    assert_eq!(
        rig.objects().await,
        referenced(&rig.url).await,
        "no unreferenced object remains"
    );
    assert!(!rig.objects().await.is_empty());
}

/// Opens a new file `/render.exr` for reading and writing (its session stays open).
async fn create_render(fs: &Fs) -> drive::fs::Opened {
    let flags = OpenFlags {
        read: true,
        write: true,
        ..OpenFlags::default()
    };
    fs.create(ROOT_INO, b"render.exr", 0o644, flags, Caller::default())
        .await
        .unwrap()
}

/// Closes `fh` (its commit must succeed after the `what`), then checks from a fresh mount
/// that `/render.exr` holds `data` and that the store holds exactly the referenced blocks.
async fn close_and_read_back(rig: &Rig, fs: &Fs, fh: u64, data: &[u8], what: &str) {
    fs.flush(fh, Caller::default())
        .await
        .unwrap_or_else(|e| panic!("close after the {what}: {}", common::error_chain(&e)));
    fs.release(fh, Caller::default()).await.unwrap();
    assert_eq!(
        read(&*rig.mount("long.write", None).await, "/render.exr").await,
        data
    );
    assert_eq!(rig.objects().await, referenced(&rig.url).await);
}

// Catches: a write session that uploaded full blocks longer ago than a pass's grace period
// loses them to the sweep and its close fails after all that writing. Blocks built in
// memory have no staged copy to store again: the mount renews their records while the
// session is open (`run_block_renewal`, once a minute), so the pass leaves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_session_whose_blocks_outlived_the_grace_period_keeps_them_until_its_close() {
    let rig = Rig::new().await;
    let fs = rig.mount("long.write", None).await;
    let data = content(2); // three full blocks
    let opened = create_render(&fs).await;
    fs.write(opened.fh, 0, &data).await.unwrap();
    // Full blocks upload while the session is open; a read of them waits for their uploads.
    let all = data.len() as u32;
    assert!(fs.read(opened.fh, 0, all).await.unwrap().to_vec() == data);
    assert_eq!(rig.objects().await.len(), 3);
    // The session outlives the grace period: its records are older than any cutoff...
    let raw = common::raw_client(&rig.url).await;
    raw.execute("UPDATE blocks SET updated_at = now() - INTERVAL '2 hours'", &[])
        .await
        .unwrap();
    // ...until the mount's renewal round, which a pass with an hour's grace then respects.
    fs.renew_write_sessions().await.unwrap();
    let mut opts = options("sweep", None);
    opts.blocks.grace = Duration::from_secs(3600);
    let swept = pass(&rig, &opts).await;
    assert_eq!(swept.blocks.deleted, 0, "{swept:?}");
    close_and_read_back(&rig, &fs, opened.fh, &data, "pass").await;
}

/// Staged blocks (written out of order) keep their bytes until the commit: a pass that took
/// their uploads anyway (a grace period shorter than the session) is answered by storing
/// them again at close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_session_whose_staged_blocks_were_swept_stores_them_again_at_close() {
    let rig = Rig::new().await;
    let fs = rig.mount("long.write", None).await;
    let data = content(2); // three full blocks
    let opened = create_render(&fs).await;
    // Each block's second half first, so no block is written in order from its start.
    let bs = MIN_BLOCK_SIZE as usize;
    for start in (0..data.len()).step_by(bs) {
        let mid = start + bs / 2;
        fs.write(opened.fh, mid as u64, &data[mid..start + bs])
            .await
            .unwrap();
        fs.write(opened.fh, start as u64, &data[start..mid])
            .await
            .unwrap();
    }
    let all = data.len() as u32;
    assert!(fs.read(opened.fh, 0, all).await.unwrap().to_vec() == data);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while rig.objects().await.len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the full blocks never uploaded"
        );
        tokio::task::yield_now().await;
    }
    let swept = pass(&rig, &options("sweep", None)).await;
    assert_eq!(swept.blocks.deleted, 3, "{swept:?}");
    assert!(rig.objects().await.is_empty());
    close_and_read_back(&rig, &fs, opened.fh, &data, "sweep").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_workspace_is_restored_under_a_free_name_until_it_is_purged() {
    let rig = Rig::new().await;
    write(&*rig.mount("ws.old", None).await, "/a.exr", &content(7)).await;
    let actor = common::actor();
    let id = rig.ws("ws.old").await.id;
    rig.meta.delete_workspace(&actor, "ws.old").await.unwrap();
    // The name is taken again meanwhile.
    write(&*rig.mount("ws.old", None).await, "/b.exr", &content(8)).await;
    let listed = rig.meta.deleted_workspace_list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].0, listed[0].1.as_str()), (id, "ws.old"));
    let taken = rig.meta.restore_workspace(&actor, id, None).await.unwrap_err();
    assert_eq!(taken.kind(), drive::ErrorKind::Exists, "{taken}");
    rig.meta
        .restore_workspace(&actor, id, Some("ws.back"))
        .await
        .unwrap();
    assert_eq!(rig.ws("ws.back").await.id, id);
    assert_eq!(
        read(&*rig.mount("ws.back", None).await, "/a.exr").await,
        content(7)
    );
    assert!(rig.meta.deleted_workspace_list().await.unwrap().is_empty());

    // Deleted again and purged: gone for good, its blocks swept, the other workspace intact.
    rig.meta.delete_workspace(&actor, "ws.back").await.unwrap();
    let purged = pass(&rig, &options("purge", None)).await;
    assert_eq!(purged.purged_workspaces, 1, "{purged:?}");
    let gone = rig.meta.restore_workspace(&actor, id, None).await.unwrap_err();
    assert_eq!(gone.kind(), drive::ErrorKind::NotFound, "{gone}");
    assert_eq!(
        read(&*rig.mount("ws.old", None).await, "/b.exr").await,
        content(8)
    );
    assert_eq!(rig.objects().await, referenced(&rig.url).await);
    let raw = common::raw_client(&rig.url).await;
    let rows: i64 = raw
        .query_one("SELECT count(*) FROM inodes WHERE workspace_id = $1", &[&id.0])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "no inode of the purged workspace is left");
}

// The pass runs expiry before the purge: expired paths land in the trash (restorable), and
// only a later pass past their retention purges them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_expires_unused_scratch_into_the_trash_and_keeps_it_for_its_retention() {
    use drive::model::{NewNode, NodeKind, Timestamp};
    let (meta, _url) = common::store_and_url().await;
    let long_ago = std::time::SystemTime::now() - Duration::from_secs(40 * 86_400);
    let clock = drive::ports::ManualClock::at(Timestamp(
        long_ago.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64,
    ));
    let old = meta.clone().with_clock(Arc::new(clock));
    let ws = common::workspace(&old, "expire.pass", drive::model::WorkspaceKind::Team).await;
    let actor = common::actor();
    let scratch = old
        .create(
            &actor,
            ws.id,
            ws.root,
            &common::name("scratch"),
            &NewNode::new(NodeKind::Directory, 0o755),
        )
        .await
        .unwrap();
    for name in ["a.tmp", "b.tmp"] {
        old.create(
            &actor,
            ws.id,
            scratch.ino,
            &common::name(name),
            &NewNode::new(NodeKind::File, 0o644),
        )
        .await
        .unwrap();
    }
    // Created now: used lately.
    meta.create(
        &actor,
        ws.id,
        scratch.ino,
        &common::name("fresh.tmp"),
        &NewNode::new(NodeKind::File, 0o644),
    )
    .await
    .unwrap();
    let store = MemoryChunkStore::new();
    let mut opts = options("expire", None);
    opts.retention = vec![RetentionClass::days(7)];
    opts.expire = Some(drive::lifecycle::ExpireRule {
        paths: vec!["/scratch".into()],
        not_accessed_for_days: 30,
    });
    let dry = run_pass(
        &meta,
        &store,
        &LifecycleOptions {
            blocks: BlockPassOptions {
                dry_run: true,
                ..opts.blocks.clone()
            },
            ..opts.clone()
        },
    )
    .await
    .unwrap();
    assert_eq!(dry.expired, 2, "{dry:?}");
    assert!(
        meta.trash_list(ws.id, None, 10).await.unwrap().is_empty(),
        "a dry run changes nothing"
    );
    let report = run_pass(&meta, &store, &opts).await.unwrap();
    assert_eq!((report.expired, report.purged_entries), (2, 0), "{report:?}");
    let trash: BTreeSet<Option<String>> = meta
        .trash_list(ws.id, None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.path)
        .collect();
    assert_eq!(
        trash,
        BTreeSet::from([
            Some("/scratch/a.tmp".to_string()),
            Some("/scratch/b.tmp".to_string())
        ])
    );
    assert!(meta.resolve(ws.id, "/scratch/fresh.tmp").await.is_ok());
}
