//! Expiry (issue 17, item 5) against a real PostgreSQL: paths nobody used for N days go to
//! the trash, used ones stay, and the mount records accesses at most once per interval.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use drive::data::{BlockStore, MemoryChunkStore, codec_for};
use drive::fs::{Caller, DriveFs, FsConfig, OpenFlags};
use drive::meta::ExpireCounts;
use drive::model::{Actor, NewNode, NodeId, NodeKind, SetAttr, Timestamp, View, Workspace, WorkspaceKind};
use drive::ports::ManualClock;
use drive::{ErrorKind, PgMetaStore};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn at(t: SystemTime) -> Timestamp {
    Timestamp(t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64)
}

/// A store whose times come from a clock the test moves, and the clock.
async fn store_at(start: SystemTime) -> (PgMetaStore, ManualClock, String) {
    let (store, url) = common::store_and_url().await;
    let clock = ManualClock::at(at(start));
    (store.with_clock(Arc::new(clock.clone())), clock, url)
}

async fn create(store: &PgMetaStore, ws: &Workspace, parent: NodeId, name: &str, kind: NodeKind) -> NodeId {
    let node = NewNode::new(kind, 0o755);
    store
        .create(&common::actor(), ws.id, parent, &common::name(name), &node)
        .await
        .expect("create")
        .ino
}

async fn mkdir(store: &PgMetaStore, ws: &Workspace, parent: NodeId, name: &str) -> NodeId {
    create(store, ws, parent, name, NodeKind::Directory).await
}

async fn touch(store: &PgMetaStore, ws: &Workspace, parent: NodeId, name: &str) -> NodeId {
    create(store, ws, parent, name, NodeKind::File).await
}

/// Names of the workspace's soft-deleted entries (the trash).
async fn trash(url: &str, ws: &Workspace) -> BTreeSet<String> {
    let client = common::raw_client(url).await;
    client
        .query(
            "SELECT name FROM entries WHERE workspace_id = $1 AND deleted_at IS NOT NULL",
            &[&ws.id.0],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| String::from_utf8(r.get(0)).unwrap())
        .collect()
}

async fn exists(store: &PgMetaStore, ws: &Workspace, path: &str) -> bool {
    match store.resolve(ws.id, path).await {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::NotFound => false,
        Err(e) => panic!("resolve {path}: {e}"),
    }
}

#[tokio::test]
async fn files_and_folders_unused_for_n_days_go_to_the_trash_and_used_ones_stay() {
    let now = SystemTime::now();
    let (store, clock, url) = store_at(now - 40 * DAY).await;
    let ws = common::workspace(&store, "expiry", WorkspaceKind::Team).await;
    let scratch = mkdir(&store, &ws, ws.root, "scratch").await;
    touch(&store, &ws, scratch, "old.txt").await;
    let read_lately = touch(&store, &ws, scratch, "read-lately.txt").await;
    let old_dir = mkdir(&store, &ws, scratch, "old-dir").await;
    touch(&store, &ws, old_dir, "a").await;
    let deep = mkdir(&store, &ws, old_dir, "deep").await;
    touch(&store, &ws, deep, "b").await;
    let mixed = mkdir(&store, &ws, scratch, "mixed").await;
    touch(&store, &ws, mixed, "old").await;
    // Outside the expiry path: never looked at.
    touch(&store, &ws, ws.root, "outside.txt").await;
    clock.set(at(now));
    touch(&store, &ws, mixed, "new").await;
    store
        .record_access(ws.id, &[(read_lately, at(now - DAY))])
        .await
        .unwrap();

    let actor = Actor("lifecycle:pass-1".into());
    let paths = vec!["/scratch".to_string(), "/does/not/exist".to_string()];
    let cutoff = now - 30 * DAY;
    let planned = store
        .expire_unaccessed(&actor, ws.id, &paths, cutoff, true)
        .await
        .unwrap();
    // old.txt, old-dir (whole, with everything below it) and mixed/old.
    assert_eq!(planned.expired, 3, "{planned:?}");
    assert_eq!(planned.skipped_write_once, 0);
    assert!(trash(&url, &ws).await.is_empty(), "a dry run deletes nothing");
    assert!(exists(&store, &ws, "/scratch/old.txt").await);

    let done = store
        .expire_unaccessed(&actor, ws.id, &paths, cutoff, false)
        .await
        .unwrap();
    assert_eq!(done, planned, "a real pass does what the dry run reported");
    let expected: BTreeSet<String> = ["old.txt", "old-dir", "old"].map(String::from).into();
    assert_eq!(trash(&url, &ws).await, expected);
    for gone in ["/scratch/old.txt", "/scratch/old-dir", "/scratch/mixed/old"] {
        assert!(!exists(&store, &ws, gone).await, "{gone} expired");
    }
    for kept in [
        "/scratch",
        "/scratch/read-lately.txt",
        "/scratch/mixed",
        "/scratch/mixed/new",
        "/outside.txt",
    ] {
        assert!(exists(&store, &ws, kept).await, "{kept} stays");
    }
    let client = common::raw_client(&url).await;
    let events: i64 = client
        .query_one(
            "SELECT count(*) FROM events WHERE actor = 'lifecycle:pass-1' AND op = 'delete'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(events, 3, "one delete event per expired unit, by the pass");

    let again = store
        .expire_unaccessed(&actor, ws.id, &paths, cutoff, false)
        .await
        .unwrap();
    assert_eq!(again.expired, 0, "{again:?}");
}

#[tokio::test]
async fn expiry_keeps_committed_files_of_a_write_once_workspace_and_counts_them() {
    let now = SystemTime::now();
    let (store, clock, url) = store_at(now - 40 * DAY).await;
    let ws = common::workspace(&store, "project", WorkspaceKind::Project).await;
    let shots = mkdir(&store, &ws, ws.root, "shots").await;
    let folder = mkdir(&store, &ws, shots, "010").await;
    let committed = touch(&store, &ws, folder, "plate.exr").await;
    store
        .setattr(
            &common::actor(),
            ws.id,
            committed,
            &SetAttr {
                size: Some(10),
                ..SetAttr::default()
            },
        )
        .await
        .unwrap();
    touch(&store, &ws, folder, "empty.tmp").await;
    clock.set(at(now));

    let counts = store
        .expire_unaccessed(
            &Actor("lifecycle:p".into()),
            ws.id,
            &["/shots".to_string()],
            now - 30 * DAY,
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        counts,
        ExpireCounts {
            expired: 1,
            skipped_write_once: 1,
            scanned: 3,
        }
    );
    assert!(exists(&store, &ws, "/shots/010/plate.exr").await);
    assert!(
        exists(&store, &ws, "/shots/010").await,
        "folders of a project never go whole"
    );
    let expected: BTreeSet<String> = ["empty.tmp".to_string()].into();
    assert_eq!(trash(&url, &ws).await, expected);
}

fn read_only() -> OpenFlags {
    OpenFlags {
        read: true,
        ..OpenFlags::default()
    }
}

#[tokio::test]
async fn opens_record_the_last_access_at_most_once_per_interval_and_stat_does_not() {
    // Whole seconds: the database keeps microseconds.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let start = UNIX_EPOCH + Duration::from_secs(now) - 10 * DAY;
    let (store, clock, url) = store_at(start).await;
    let ws = common::workspace(&store, "access", WorkspaceKind::Team).await;
    let file = touch(&store, &ws, ws.root, "f").await;
    let tmp = tempfile::tempdir().unwrap();
    let blocks = BlockStore::new(
        store.clone(),
        Arc::new(MemoryChunkStore::new()),
        codec_for(&ws, None).unwrap(),
        None,
    );
    let mut cfg = FsConfig::new(View::Live, ws.root, tmp.path().join("staging"));
    cfg.clock = Arc::new(clock.clone());
    let fs = DriveFs::new(store.clone(), Arc::new(blocks), ws.clone(), cfg).unwrap();
    let caller = Caller::default();

    fs.getattr(file.0).await.unwrap();
    fs.lookup(drive::fs::ROOT_INO, b"f").await.unwrap();
    fs.flush_accesses().await;
    assert_eq!(
        store.last_access(file).await.unwrap(),
        None,
        "stat and lookup are no access"
    );

    let client = common::raw_client(&url).await;
    store
        .create_snapshot(&common::actor(), ws.id, "before", "/")
        .await
        .unwrap();
    let versions_before = inode_versions(&client, file).await;
    // Many opens within the hour: one recorded time, the first.
    for minute in 0..50u64 {
        clock.set(at(start + Duration::from_secs(minute * 60)));
        let opened = fs.open(file.0, read_only(), caller).await.unwrap();
        fs.release(opened.fh, caller).await.unwrap();
        fs.flush_accesses().await;
    }
    assert_eq!(store.last_access(file).await.unwrap(), Some(start));
    assert_eq!(
        inode_versions(&client, file).await,
        versions_before,
        "an access makes no inode version"
    );

    let later = start + Duration::from_secs(61 * 60);
    clock.set(at(later));
    let opened = fs.open(file.0, read_only(), caller).await.unwrap();
    fs.release(opened.fh, caller).await.unwrap();
    fs.flush_accesses().await;
    assert_eq!(store.last_access(file).await.unwrap(), Some(later));
}

async fn inode_versions(client: &tokio_postgres::Client, ino: NodeId) -> i64 {
    client
        .query_one("SELECT count(*) FROM inodes WHERE ino = $1", &[&(ino.0 as i64)])
        .await
        .unwrap()
        .get(0)
}
