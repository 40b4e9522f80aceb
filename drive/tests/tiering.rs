//! Tiering (issue 17, item 6) against a real PostgreSQL and the testkit S3 server: blocks of
//! files nobody used for N days move to a colder class (a CopyObject onto itself with the
//! class), a block shared with a recently used file stays, and a read of an archived block
//! fails with the restore error.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use drive::PgMetaStore;
use drive::data::{BlockStore, ChunkStore, MemoryChunkStore, S3ChunkStore, block_key, codec_for};
use drive::fs::{Caller, DriveFs, FsConfig, FsErrorKind, OpenFlags, ROOT_INO};
use drive::model::{NodeId, Timestamp, View, Workspace, WorkspaceKind};
use drive::ports::ManualClock;
use drive::tiering::{TransitionCounts, transition_blocks};
use drive_testkit::s3::{Fault, S3Server};

const BUCKET: &str = "tiers";
const DAY: Duration = Duration::from_secs(24 * 3600);

fn at(t: SystemTime) -> Timestamp {
    Timestamp(t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64)
}

async fn s3_store(server: &S3Server) -> Arc<dyn ChunkStore> {
    let mut cfg = common::s3_config(server, BUCKET);
    cfg.max_attempts = 2;
    Arc::new(S3ChunkStore::connect(&cfg).await)
}

struct Rig {
    store: PgMetaStore,
    clock: ManualClock,
    ws: Workspace,
    objects: Arc<dyn ChunkStore>,
    tmp: tempfile::TempDir,
}

impl Rig {
    async fn new(objects: Arc<dyn ChunkStore>, start: SystemTime) -> Rig {
        let clock = ManualClock::at(at(start));
        let store = common::store().await.with_clock(Arc::new(clock.clone()));
        let ws = common::workspace(&store, "tiers", WorkspaceKind::Team).await;
        Rig {
            store,
            clock,
            ws,
            objects,
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    /// A mount with no block cache, so every read reaches the object store.
    fn mount(&self, n: u32) -> DriveFs<BlockStore> {
        let blocks = BlockStore::new(
            self.store.clone(),
            self.objects.clone(),
            codec_for(&self.ws, None).unwrap(),
            None,
        );
        let mut cfg = FsConfig::new(
            View::Live,
            self.ws.root,
            self.tmp.path().join(format!("staging-{n}")),
        );
        cfg.clock = Arc::new(self.clock.clone());
        DriveFs::new(self.store.clone(), Arc::new(blocks), self.ws.clone(), cfg).unwrap()
    }

    /// Writes `name` with `content` at the clock's time; the file's node and its first block.
    async fn write(&self, fs: &DriveFs<BlockStore>, name: &str, content: &[u8]) -> (NodeId, [u8; 32]) {
        let caller = Caller::default();
        let flags = OpenFlags {
            write: true,
            ..OpenFlags::default()
        };
        let opened = fs
            .create(ROOT_INO, name.as_bytes(), 0o644, flags, caller)
            .await
            .unwrap();
        fs.write(opened.fh, 0, content).await.unwrap();
        fs.release(opened.fh, caller).await.unwrap();
        let ino = fs.lookup(ROOT_INO, name.as_bytes()).await.unwrap().ino;
        let map = self.store.block_map(View::Live, ino, 0, 1).await.unwrap();
        (ino, map[0].hash)
    }

    async fn transition(&self, class: &str, not_used_since: SystemTime, dry_run: bool) -> TransitionCounts {
        transition_blocks(
            &self.store,
            self.objects.as_ref(),
            class,
            not_used_since,
            None,
            dry_run,
        )
        .await
        .unwrap()
    }

    async fn tier(&self, hash: &[u8; 32]) -> String {
        self.store.block(hash).await.unwrap().unwrap().tier
    }
}

#[tokio::test]
async fn blocks_unused_for_n_days_move_to_the_colder_class_and_a_shared_recent_one_stays() {
    let server = S3Server::start().unwrap();
    let now = SystemTime::now();
    let rig = Rig::new(s3_store(&server).await, now - 40 * DAY).await;
    let fs = rig.mount(1);
    let (_, cold) = rig.write(&fs, "cold.bin", &[1u8; 5000]).await;
    let (_, shared) = rig.write(&fs, "shared-old.bin", &[2u8; 7000]).await;
    rig.clock.set(at(now));
    let (_, shared_again) = rig.write(&fs, "shared-new.bin", &[2u8; 7000]).await;
    assert_eq!(shared, shared_again, "identical content shares one block");
    let cold_size = rig.store.block(&cold).await.unwrap().unwrap().stored_size;

    let cutoff = now - 30 * DAY;
    let planned = rig.transition("GLACIER", cutoff, true).await;
    let expected = TransitionCounts {
        transitioned: 1,
        bytes: cold_size,
        missing: 0,
    };
    assert_eq!(planned, expected);
    assert!(server.requests().copies().is_empty(), "a dry run copies nothing");
    assert_eq!(rig.tier(&cold).await, "standard");

    let done = rig.transition("GLACIER", cutoff, false).await;
    assert_eq!(done, expected);
    let copies = server.requests().copies();
    assert_eq!(copies.len(), 1, "{copies:?}");
    let key = format!("ws/{}", block_key(&cold));
    assert_eq!(copies[0].path, format!("/{BUCKET}/{key}"));
    assert_eq!(
        copies[0].source.trim_start_matches('/'),
        format!("{BUCKET}/{key}")
    );
    assert_eq!(copies[0].storage_class.as_deref(), Some("GLACIER"));
    assert_eq!(copies[0].metadata_directive.as_deref(), Some("COPY"));
    assert_eq!(rig.tier(&cold).await, "GLACIER");
    assert_eq!(
        rig.tier(&shared).await,
        "standard",
        "a recently used file shares it"
    );

    // Moved blocks are not candidates again.
    let again = rig.transition("GLACIER", cutoff, false).await;
    assert_eq!(again, TransitionCounts::default());
}

#[tokio::test]
async fn a_recorded_open_keeps_a_files_blocks_in_their_tier() {
    let server = S3Server::start().unwrap();
    let now = SystemTime::now();
    let rig = Rig::new(s3_store(&server).await, now - 40 * DAY).await;
    let fs = rig.mount(1);
    let (ino, block) = rig.write(&fs, "read.bin", &[3u8; 3000]).await;
    rig.store
        .record_access(rig.ws.id, &[(ino, at(now - DAY))])
        .await
        .unwrap();
    let counts = rig.transition("STANDARD_IA", now - 30 * DAY, false).await;
    assert_eq!(counts, TransitionCounts::default());
    assert_eq!(rig.tier(&block).await, "standard");
}

#[tokio::test]
async fn reading_an_archived_block_fails_with_the_restore_error() {
    let server = S3Server::start().unwrap();
    let rig = Rig::new(s3_store(&server).await, SystemTime::now()).await;
    let content = vec![9u8; 4000];
    let (ino, _) = rig.write(&rig.mount(1), "archived.bin", &content).await;
    // A fresh mount: nothing of the file is cached.
    let fs = rig.mount(2);
    assert_eq!(common::read_file(&fs, ino.0).await.unwrap(), content);
    let fs = rig.mount(3);
    server.faults().always(
        Some("GET"),
        Fault::Error {
            status: 403,
            code: "InvalidObjectState",
        },
    );
    let err = common::read_file(&fs, ino.0).await.unwrap_err();
    assert_eq!(err.kind(), FsErrorKind::Io);
    let chain = common::error_chain(&err);
    assert!(
        chain.contains("archive storage class") && chain.contains("restore"),
        "{chain}"
    );
}

#[tokio::test]
async fn a_store_without_storage_classes_moves_nothing() {
    let now = SystemTime::now();
    let rig = Rig::new(Arc::new(MemoryChunkStore::new()), now - 40 * DAY).await;
    let fs = rig.mount(1);
    let (_, block) = rig.write(&fs, "local.bin", &[4u8; 100]).await;
    let planned = rig.transition("GLACIER", now - 30 * DAY, true).await;
    assert_eq!(
        planned,
        TransitionCounts::default(),
        "a dry run predicts the real pass"
    );
    let counts = rig.transition("GLACIER", now - 30 * DAY, false).await;
    assert_eq!(counts, TransitionCounts::default());
    assert_eq!(rig.tier(&block).await, "standard");
}
