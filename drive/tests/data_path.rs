//! The block data path end to end: the file system's write and read paths over a real S3
//! server (s3s-fs on loopback) and a local block directory, with and without encryption,
//! with the node-local cache, under injected S3 faults.

mod common;

use common::read_file;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use drive::PgMetaStore;
use drive::cache::{BlockCache, CacheConfig, MemoryCache};
use drive::data::{
    BlockCodec, BlockStore, ChunkStore, DataKey, Kek, LocalChunkStore, S3ChunkStore, S3Config, S3Credentials,
    codec_for,
};
use drive::fs::{Caller, DriveFs, FsConfig, OpenFlags, ROOT_INO};
use drive::model::{View, Workspace, WorkspaceKind, WorkspaceSpec};
use drive_testkit::s3::{ACCESS_KEY, Fault, S3Server, SECRET_KEY};
use rand::{RngCore as _, SeedableRng as _};

const BUCKET: &str = "studio";
const MIB: usize = 1 << 20;

fn caller() -> Caller {
    Caller {
        uid: 0,
        gid: 0,
        pid: 1,
    }
}

fn s3_config(server: &S3Server) -> S3Config {
    let mut cfg = S3Config::new(BUCKET).with_endpoint(server.endpoint());
    cfg.prefix = "ws".into();
    cfg.credentials = Some(S3Credentials {
        access_key_id: ACCESS_KEY.into(),
        secret_access_key: SECRET_KEY.into(),
        session_token: None,
    });
    // Quick retries, so that the persistent-outage test fails fast.
    cfg.max_attempts = 4;
    cfg.initial_backoff = Duration::from_millis(20);
    cfg.attempt_timeout = Duration::from_secs(10);
    cfg
}

async fn s3_store(server: &S3Server) -> Arc<dyn ChunkStore> {
    drive_testkit::install_crypto_provider();
    server.create_bucket(BUCKET).unwrap();
    Arc::new(S3ChunkStore::connect(&s3_config(server)).await)
}

/// One workspace with its metadata store and object store; each `mount` is a fresh file
/// system (as a new node would be) with its own cache.
struct Rig {
    meta: PgMetaStore,
    ws: Workspace,
    store: Arc<dyn ChunkStore>,
    codec: BlockCodec,
    tmp: tempfile::TempDir,
}

impl Rig {
    async fn new(store: Arc<dyn ChunkStore>, encrypted: bool) -> Rig {
        let meta = common::store().await;
        let kek = Kek::generate();
        let mut spec = WorkspaceSpec::new("data", WorkspaceKind::Team);
        if encrypted {
            spec.wrapped_key = Some(DataKey::generate().wrap(&kek));
        }
        let ws = meta.create_workspace(&common::actor(), &spec).await.unwrap();
        let codec = codec_for(&ws, Some(&kek)).unwrap();
        assert_eq!(codec.is_encrypted(), encrypted);
        Rig {
            meta,
            ws,
            store,
            codec,
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    fn blocks(&self, cache_bytes: Option<u64>) -> BlockStore {
        let cache = cache_bytes.map(|max| {
            let dir = self.tmp.path().join(format!("cache-{}", uuid_like()));
            let mut cfg = CacheConfig::new(dir, max);
            cfg.min_free_ratio = 0.0;
            Arc::new(BlockCache::open(cfg).unwrap())
        });
        BlockStore::new(self.meta.clone(), self.store.clone(), self.codec.clone(), cache)
    }

    fn mount(&self, blocks: BlockStore) -> DriveFs<BlockStore> {
        self.mount_with(blocks, |_| {})
    }

    fn mount_with(&self, blocks: BlockStore, settings: impl FnOnce(&mut FsConfig)) -> DriveFs<BlockStore> {
        let staging = self.tmp.path().join(format!("staging-{}", uuid_like()));
        let mut cfg = FsConfig::new(View::Live, self.ws.root, staging);
        settings(&mut cfg);
        DriveFs::new(self.meta.clone(), Arc::new(blocks), self.ws.clone(), cfg).unwrap()
    }
}

fn uuid_like() -> u64 {
    rand::rng().next_u64()
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

fn write_flags() -> OpenFlags {
    OpenFlags {
        read: true,
        write: true,
        ..OpenFlags::default()
    }
}

/// Creates `name` with `data`, written in 1 MiB requests, and closes it. Returns its inode.
async fn write_file(fs: &DriveFs<BlockStore>, name: &str, data: &[u8]) -> u64 {
    let opened = fs
        .create(ROOT_INO, name.as_bytes(), 0o644, write_flags(), caller())
        .await
        .unwrap();
    for (i, chunk) in data.chunks(MIB).enumerate() {
        fs.write(opened.fh, (i * MIB) as u64, chunk).await.unwrap();
    }
    fs.flush(opened.fh, caller()).await.unwrap();
    fs.release(opened.fh, caller()).await.unwrap();
    fs.to_ino(opened.attr.ino)
}

fn assert_same(actual: &[u8], expected: &[u8], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    if let Some(pos) = actual.iter().zip(expected).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {pos}");
    }
}

/// Objects in the server's bucket with their contents.
fn bucket_objects(server: &S3Server) -> BTreeMap<PathBuf, Vec<u8>> {
    server
        .objects(BUCKET, "ws/blocks/")
        .unwrap()
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            (p, data)
        })
        .collect()
}

async fn round_trips(rig: &Rig, sizes: &[usize]) {
    let bs = rig.ws.block_size as usize;
    let writer = rig.mount(rig.blocks(Some(1 << 30)));
    let mut files = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let size = match size {
            usize::MAX => bs - 1,
            s if s == usize::MAX - 1 => bs + 1,
            s => s,
        };
        let data = pattern(size, i as u64);
        let ino = write_file(&writer, &format!("f{i}-{size}"), &data).await;
        files.push((ino, data));
    }
    // Cold: another node, empty cache. Warm: the same node again, served from its cache; a
    // local store's objects are not copied into the cache (they already are on this disk),
    // so a warm read fetches them from the store again.
    let warm_fetches = |blocks: u64| if rig.store.is_local() { blocks } else { 0 };
    let reader_blocks = rig.blocks(Some(1 << 30));
    let reader = rig.mount(reader_blocks.clone());
    for (ino, data) in &files {
        let gets_before = reader_blocks
            .stats()
            .gets
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_same(&read_file(&reader, *ino).await.unwrap(), data, "cold read");
        let gets_cold = reader_blocks
            .stats()
            .gets
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            gets_cold - gets_before,
            data.len().div_ceil(bs) as u64,
            "a cold read fetches each block once"
        );
        let warm = rig.mount(reader_blocks.clone());
        assert_same(&read_file(&warm, *ino).await.unwrap(), data, "warm read");
        assert_eq!(
            reader_blocks
                .stats()
                .gets
                .load(std::sync::atomic::Ordering::Relaxed),
            gets_cold + warm_fetches(gets_cold - gets_before),
            "a warm read is served from the cache (from the store when it is local)"
        );
    }
}

const SIZES: &[usize] = &[0, 1, usize::MAX, 4 * MIB, usize::MAX - 1, 9 * MIB + 17];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn round_trips_s3_plaintext() {
    let server = S3Server::start().unwrap();
    let rig = Rig::new(s3_store(&server).await, false).await;
    round_trips(&rig, SIZES).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn round_trips_s3_encrypted_with_a_large_file() {
    let server = S3Server::start().unwrap();
    let rig = Rig::new(s3_store(&server).await, true).await;
    let mut sizes = SIZES.to_vec();
    sizes.push(200 * MIB);
    round_trips(&rig, &sizes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn round_trips_local_plaintext_and_encrypted() {
    for encrypted in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalChunkStore::open(dir.path().join("blocks")).unwrap());
        let rig = Rig::new(store, encrypted).await;
        round_trips(&rig, SIZES).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overwriting_one_byte_uploads_exactly_one_block() {
    let server = S3Server::start().unwrap();
    let rig = Rig::new(s3_store(&server).await, false).await;
    let fs = rig.mount(rig.blocks(None));
    let mut data = pattern(100 * MIB, 7);
    let ino = write_file(&fs, "big", &data).await;
    let before = bucket_objects(&server);
    assert_eq!(before.len(), (100 * MIB).div_ceil(rig.ws.block_size as usize));
    let puts = server.requests().puts();

    let opened = fs.open(ino, write_flags(), caller()).await.unwrap();
    fs.write(opened.fh, 50 * MIB as u64 + 3, b"X").await.unwrap();
    fs.release(opened.fh, caller()).await.unwrap();
    data[50 * MIB + 3] = b'X';

    let after = bucket_objects(&server);
    assert_eq!(server.requests().puts() - puts, 1, "one upload");
    assert_eq!(after.len(), before.len() + 1, "one new object");
    for (path, bytes) in &before {
        assert_eq!(after.get(path), Some(bytes), "{} changed", path.display());
    }
    let reader = rig.mount(rig.blocks(None));
    assert_same(
        &read_file(&reader, ino).await.unwrap(),
        &data,
        "after the overwrite",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identical_content_is_stored_once() {
    let server = S3Server::start().unwrap();
    let rig = Rig::new(s3_store(&server).await, true).await;
    let fs = rig.mount(rig.blocks(None));
    let data = pattern(20 * MIB + 5, 9);
    write_file(&fs, "a", &data).await;
    let once = bucket_objects(&server).len();
    assert_eq!(once, 6);
    let b = write_file(&fs, "b", &data).await;
    assert_eq!(bucket_objects(&server).len(), once, "the copy stored nothing new");
    assert_same(
        &read_file(&rig.mount(rig.blocks(None)), b).await.unwrap(),
        &data,
        "second file",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn encrypted_objects_hide_plaintext_and_detect_damage() {
    let server = S3Server::start().unwrap();
    let rig = Rig::new(s3_store(&server).await, true).await;
    let fs = rig.mount(rig.blocks(None));
    let marker = b"STUDIO-DRIVE-KNOWN-PLAINTEXT-0123456789";
    let data: Vec<u8> = marker.iter().copied().cycle().take(6 * MIB).collect();
    let ino = write_file(&fs, "secret.exr", &data).await;
    let objects = bucket_objects(&server);
    assert_eq!(objects.len(), 2);
    for (path, bytes) in &objects {
        assert!(
            !bytes.windows(16).any(|w| w == &marker[..16]),
            "{} holds plaintext",
            path.display()
        );
    }

    // A wrong key-encryption key is refused before any block is touched.
    let err = codec_for(&rig.ws, Some(&Kek::generate())).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    let err = codec_for(&rig.ws, None).unwrap_err();
    assert!(
        err.to_string().contains("key-encryption key is required"),
        "{err}"
    );

    // A flipped byte in one object: the read fails with a clear error, never wrong bytes.
    let (victim, mut bytes) = objects.into_iter().next().unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&victim, &bytes).unwrap();
    let err = read_file(&rig.mount(rig.blocks(None)), ino).await.unwrap_err();
    let chain = common::error_chain(&err);
    assert!(chain.contains("could not be authenticated"), "{chain}");

    // A truncated object likewise (its intact frames still read; the file's read fails at
    // the frame that lost its end).
    bytes[mid] ^= 0x01;
    std::fs::write(&victim, &bytes[..bytes.len() - 100]).unwrap();
    let err = read_file(&rig.mount(rig.blocks(None)), ino).await.unwrap_err();
    assert!(
        common::error_chain(&err).contains("truncated"),
        "{}",
        common::error_chain(&err)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transient_s3_faults_are_retried() {
    let server = S3Server::start().unwrap();
    let rig = Rig::new(s3_store(&server).await, false).await;
    let fs = rig.mount(rig.blocks(None));
    server.faults().next(Some("PUT"), 2, Fault::Status(503));
    server.faults().next(Some("PUT"), 1, Fault::Status(500));
    server.faults().next(Some("PUT"), 1, Fault::Drop);
    server
        .faults()
        .next(Some("GET"), 2, Fault::Delay(Duration::from_millis(300)));
    server.faults().next(Some("GET"), 1, Fault::Status(503));
    let data = pattern(10 * MIB, 3);
    let ino = write_file(&fs, "flaky", &data).await;
    assert_same(
        &read_file(&rig.mount(rig.blocks(None)), ino).await.unwrap(),
        &data,
        "after faults",
    );
    assert_eq!(
        server.faults().injected(),
        7,
        "every fault was hit and retried past"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_persistent_outage_fails_close_and_keeps_the_old_content() {
    let server = S3Server::start().unwrap();
    let rig = Rig::new(s3_store(&server).await, false).await;
    let fs = rig.mount(rig.blocks(None));
    let v1 = pattern(5 * MIB, 1);
    let ino = write_file(&fs, "shot.exr", &v1).await;
    let objects = bucket_objects(&server).len();

    server.faults().always(None, Fault::Status(503));
    let opened = fs.open(ino, write_flags(), caller()).await.unwrap();
    let v2 = pattern(5 * MIB, 2);
    for (i, chunk) in v2.chunks(MIB).enumerate() {
        // Writes may already fail once background uploads give up; close must fail either way.
        if fs.write(opened.fh, (i * MIB) as u64, chunk).await.is_err() {
            break;
        }
    }
    let err = fs.flush(opened.fh, caller()).await.unwrap_err();
    assert_eq!(err.kind(), drive::fs::FsErrorKind::Io, "{err}");
    assert!(
        common::error_chain(&err).contains("unavailable"),
        "{}",
        common::error_chain(&err)
    );
    let _ = fs.release(opened.fh, caller()).await;
    server.faults().clear();

    assert_eq!(bucket_objects(&server).len(), objects, "nothing new was stored");
    let attr = rig.meta.getattr(View::Live, fs.to_node(ino)).await.unwrap();
    assert_eq!(attr.size, v1.len() as u64);
    assert_same(
        &read_file(&rig.mount(rig.blocks(None)), ino).await.unwrap(),
        &v1,
        "old content",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cache_is_bounded_and_survives_a_restart() {
    let server = S3Server::start().unwrap();
    let rig = Rig::new(s3_store(&server).await, true).await;
    let cache_dir = rig.tmp.path().join("node-cache");
    let limit = 10 * MIB as u64;
    let open_cache = || {
        let mut cfg = CacheConfig::new(&cache_dir, limit);
        cfg.min_free_ratio = 0.0;
        Arc::new(BlockCache::open(cfg).unwrap())
    };
    let cache = open_cache();
    let blocks = BlockStore::new(
        rig.meta.clone(),
        rig.store.clone(),
        rig.codec.clone(),
        Some(cache.clone()),
    );
    let fs = rig.mount(blocks.clone());
    let big = pattern(40 * MIB, 4);
    let ino = write_file(&fs, "larger-than-cache", &big).await;
    assert!(cache.used_bytes() <= limit, "{} > {limit}", cache.used_bytes());
    assert_same(
        &read_file(&fs, ino).await.unwrap(),
        &big,
        "read through a small cache",
    );
    assert!(cache.used_bytes() <= limit);
    assert!(cache.stats().evictions.load(std::sync::atomic::Ordering::Relaxed) > 0);
    let on_disk: u64 = walk(&cache_dir)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(on_disk, cache.used_bytes(), "the index matches the files");

    // A small file that fits, then a restart: its blocks are served without a GET.
    let small = pattern(6 * MIB, 5);
    let small_ino = write_file(&fs, "small", &small).await;
    let held = cache.len();
    drop(fs);
    drop(blocks);
    drop(cache);
    // A crash's leftover (old) and a write another process sharing the directory has in
    // progress (new): the first goes, the second stays.
    let torn = cache_dir.join(".tmp").join("torn-entry");
    std::fs::write(&torn, b"half").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&torn)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
        .unwrap();
    let in_flight = cache_dir.join(".tmp").join("in-flight");
    std::fs::write(&in_flight, b"being written").unwrap();
    let cache = open_cache();
    assert_eq!(cache.len(), held, "index rebuilt from disk");
    assert!(!torn.exists(), "a crash's temp file is removed");
    assert!(in_flight.exists(), "a temp file being written is left alone");
    std::fs::remove_file(&in_flight).unwrap();
    let blocks = BlockStore::new(
        rig.meta.clone(),
        rig.store.clone(),
        rig.codec.clone(),
        Some(cache.clone()),
    );
    let gets = server.requests().gets();
    assert_same(
        &read_file(&rig.mount(blocks), small_ino).await.unwrap(),
        &small,
        "after restart",
    );
    assert_eq!(server.requests().gets(), gets, "served from the restarted cache");
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_readers_of_a_cold_block_cause_one_get() {
    let server = S3Server::start().unwrap();
    let rig = Rig::new(s3_store(&server).await, false).await;
    let writer = rig.blocks(None);
    let hash = writer.put(Bytes::from(pattern(4 * MIB, 11))).await.unwrap();
    let reader = rig.blocks(Some(1 << 30));
    // Slow the one GET down so that every reader arrives while it is in flight.
    server
        .faults()
        .next(Some("GET"), 1, Fault::Delay(Duration::from_millis(500)));
    let gets = server.requests().gets();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let r = reader.clone();
            tokio::spawn(async move { r.get(hash).await.map(|b| *blake3::hash(&b).as_bytes()) })
        })
        .collect();
    let expected = *blake3::hash(&pattern(4 * MIB, 11)).as_bytes();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), expected);
    }
    assert_eq!(server.requests().gets() - gets, 1, "single flight");
}

#[tokio::test]
async fn hot_blocks_are_served_from_memory_within_its_limit() {
    use std::sync::atomic::Ordering::Relaxed;
    let server = S3Server::start().unwrap();
    let rig = Rig::new(s3_store(&server).await, true).await;
    let disk = rig.blocks(Some(1 << 30));
    let disk_cache = disk.cache().unwrap().clone();
    let memory = Arc::new(MemoryCache::new(8 * MIB as u64));
    let blocks = disk.with_memory_cache(memory.clone());
    let fs = rig.mount(blocks.clone());
    let data = pattern(6 * MIB, 21);
    let ino = write_file(&fs, "hot", &data).await;
    // Written blocks are remembered: reading them back touches neither disk nor S3.
    let (gets, disk_hits) = (server.requests().gets(), disk_cache.stats().hits.load(Relaxed));
    for _ in 0..3 {
        assert_same(&read_file(&fs, ino).await.unwrap(), &data, "hot read");
    }
    assert_eq!(server.requests().gets(), gets, "no GET for hot blocks");
    assert_eq!(
        disk_cache.stats().hits.load(Relaxed),
        disk_hits,
        "no disk read for hot blocks"
    );
    assert!(memory.stats().hits.load(Relaxed) >= 6, "two blocks, three reads");

    // More data than the memory limit: it stays bounded and evicted blocks come from disk.
    let more = pattern(16 * MIB, 22);
    let more_ino = write_file(&fs, "more", &more).await;
    assert!(
        memory.used_bytes() <= 8 * MIB as u64,
        "{} bytes held",
        memory.used_bytes()
    );
    assert!(memory.stats().evictions.load(Relaxed) > 0);
    assert_same(&read_file(&fs, more_ino).await.unwrap(), &more, "after eviction");
    assert_same(&read_file(&fs, ino).await.unwrap(), &data, "first file again");
    assert!(
        disk_cache.stats().hits.load(Relaxed) > disk_hits,
        "evicted blocks read from disk"
    );
    assert_eq!(server.requests().gets(), gets, "still no GET");
}

/// Large objects go to disk with O_DIRECT, padded to a page and cut back; small ones through
/// the page cache. Every length around the thresholds reads back byte for byte, on the disk
/// under the test (ext4 here: direct) and on /dev/shm when it exists (tmpfs: the buffered
/// fallback), also when an object replaces one of another length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_store_objects_of_every_length_read_back_written_directly_or_not() {
    let mut roots = vec![tempfile::tempdir().unwrap()];
    if std::path::Path::new("/dev/shm").is_dir() {
        roots.push(tempfile::tempdir_in("/dev/shm").unwrap());
    }
    let lens = [
        0,
        4095,
        (1 << 20) - 1,
        1 << 20,
        (1 << 20) + 1,
        (4 << 20) + 2_113,
        3 * 4096,
    ];
    for root in &roots {
        let store = LocalChunkStore::open(root.path()).unwrap();
        for (i, len) in lens.into_iter().enumerate() {
            let data: Vec<u8> = (0..len)
                .map(|j| (j as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ i as u8)
                .collect();
            let key = format!("blocks/{i:02}/object");
            store.put(&key, Bytes::from(data.clone())).await.unwrap();
            let got = store.get(&key).await.unwrap();
            assert_eq!(
                got.len(),
                len,
                "{}: length of a {len}-byte object",
                root.path().display()
            );
            assert!(
                got == data,
                "{}: content of a {len}-byte object",
                root.path().display()
            );
        }
        // Replaced by shorter and longer objects.
        for len in [(4 << 20) + 9, 1 << 20, 5] {
            let data = vec![0xa5u8; len];
            store
                .put("blocks/00/object", Bytes::from(data.clone()))
                .await
                .unwrap();
            assert!(
                store.get("blocks/00/object").await.unwrap() == data,
                "replaced by {len} bytes"
            );
        }
    }
}

#[tokio::test]
async fn local_store_is_crash_safe_and_confined() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(".tmp")).unwrap();
    std::fs::write(dir.path().join(".tmp/leftover"), b"torn").unwrap();
    let store = LocalChunkStore::open(dir.path()).unwrap();
    assert!(!dir.path().join(".tmp/leftover").exists());
    store
        .put("blocks/ab/abc", Bytes::from_static(b"object"))
        .await
        .unwrap();
    assert_eq!(
        store.get("blocks/ab/abc").await.unwrap(),
        Bytes::from_static(b"object")
    );
    assert_eq!(
        store.list("blocks/").await.unwrap(),
        vec!["blocks/ab/abc".to_string()]
    );
    for bad in ["../escape", "/abs", "a/../../b", "", ".tmp/x"] {
        assert!(store.put(bad, Bytes::new()).await.is_err(), "{bad:?} accepted");
    }
    assert!(matches!(
        store.get("blocks/none").await,
        Err(drive::data::StoreError::NotFound { .. })
    ));
    store.delete("blocks/ab/abc").await.unwrap();
    store.delete("blocks/ab/abc").await.unwrap();
}

#[tokio::test]
async fn s3_store_lists_deletes_and_uses_multipart_for_large_objects() {
    let server = S3Server::start().unwrap();
    server.create_bucket(BUCKET).unwrap();
    drive_testkit::install_crypto_provider();
    let mut cfg = s3_config(&server);
    cfg.multipart_threshold = 6 << 20;
    cfg.part_size = 5 << 20;
    cfg.read_part_size = 1 << 20;
    let store = S3ChunkStore::connect(&cfg).await;
    let big = Bytes::from(pattern(17 * MIB + 3, 5));
    let posts = server.requests().post.load(std::sync::atomic::Ordering::Relaxed);
    store.put("blocks/big", big.clone()).await.unwrap();
    assert!(
        server.requests().post.load(std::sync::atomic::Ordering::Relaxed) - posts >= 2,
        "multipart create and complete are POSTs"
    );
    let gets = server.requests().gets();
    assert_eq!(store.get("blocks/big").await.unwrap(), big);
    assert_eq!(server.requests().gets() - gets, 18, "ranged GETs of 1 MiB");
    store.put("blocks/small", Bytes::from_static(b"x")).await.unwrap();
    let mut keys = store.list("blocks/").await.unwrap();
    keys.sort();
    assert_eq!(keys, vec!["blocks/big".to_string(), "blocks/small".to_string()]);
    store.delete("blocks/big").await.unwrap();
    assert!(matches!(
        store.get("blocks/big").await,
        Err(drive::data::StoreError::NotFound { .. })
    ));
    // Refused credentials are a clear, permanent failure (not retried as an outage).
    let mut wrong = s3_config(&server);
    wrong.credentials.as_mut().unwrap().secret_access_key = "wrong".into();
    let err = S3ChunkStore::connect(&wrong)
        .await
        .put("k", Bytes::new())
        .await
        .unwrap_err();
    assert!(!err.is_transient(), "{err}");
}

/// Paging through a few thousand keys, and the listings after changes: the test S3 server
/// keeps the last full listing between pages, which every change must void.
#[tokio::test]
async fn s3_listings_page_through_thousands_of_keys_and_see_changes() {
    use futures::StreamExt as _;
    let server = S3Server::start().unwrap();
    server.create_bucket(BUCKET).unwrap();
    drive_testkit::install_crypto_provider();
    let store = S3ChunkStore::connect(&s3_config(&server)).await;
    let want: Vec<String> = (0..2_300).map(|i| format!("many/k{i:05}")).collect();
    futures::stream::iter(want.iter())
        .map(|k| store.put(k, Bytes::from_static(b"x")))
        .buffer_unordered(32)
        .for_each(|r| async move { r.unwrap() })
        .await;
    store.put("other/k", Bytes::from_static(b"x")).await.unwrap();

    let gets = server.requests().gets();
    assert_eq!(
        store.list("many/").await.unwrap(),
        want,
        "every key once, in order"
    );
    assert_eq!(
        server.requests().gets() - gets,
        3,
        "three pages of at most 1,000 keys"
    );

    // Each change is listed on its own, so each must void the listing before it.
    let mut changed = want.clone();
    store.delete("many/k00001").await.unwrap();
    changed.remove(1);
    assert_eq!(store.list("many/").await.unwrap(), changed, "after a delete");
    store.put("many/k99999", Bytes::from_static(b"x")).await.unwrap();
    changed.push("many/k99999".to_string());
    assert_eq!(store.list("many/").await.unwrap(), changed, "after a put");
    assert_eq!(store.list("other/").await.unwrap(), vec!["other/k".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_cache_entry_is_dropped_and_fetched_again() {
    let server = S3Server::start().unwrap();
    let rig = Rig::new(s3_store(&server).await, false).await;
    let blocks = rig.blocks(Some(1 << 30));
    let cache = blocks.cache().unwrap().clone();
    let data = pattern(6 * MIB, 9);
    let ino = write_file(&rig.mount(blocks.clone()), "damaged", &data).await;
    let entries: Vec<PathBuf> = walk(cache.dir())
        .into_iter()
        .filter(|p| !p.starts_with(cache.dir().join(".tmp")))
        .collect();
    assert_eq!(entries.len(), 2, "both written blocks are cached");
    // One entry with a flipped bit, one cut short.
    let mut flipped = std::fs::read(&entries[0]).unwrap();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x10;
    std::fs::write(&entries[0], &flipped).unwrap();
    let cut = std::fs::read(&entries[1]).unwrap();
    std::fs::write(&entries[1], &cut[..cut.len() - 3]).unwrap();

    let gets = server.requests().gets();
    assert_same(
        &read_file(&rig.mount(blocks.clone()), ino).await.unwrap(),
        &data,
        "read over damaged cache entries",
    );
    assert_eq!(
        server.requests().gets() - gets,
        2,
        "each damaged block fetched again"
    );
    // The refetched blocks replaced the damaged entries: the next read needs no GET.
    let gets = server.requests().gets();
    assert_same(
        &read_file(&rig.mount(blocks), ino).await.unwrap(),
        &data,
        "read after repair",
    );
    assert_eq!(server.requests().gets(), gets, "served from the repaired cache");
}

fn local_rig_store(dir: &tempfile::TempDir) -> Arc<dyn ChunkStore> {
    Arc::new(LocalChunkStore::open(dir.path().join("blocks")).unwrap())
}

/// Names in the root as another mount lists them.
async fn listed(fs: &DriveFs<BlockStore>) -> Vec<String> {
    let dh = fs.opendir(ROOT_INO).await.unwrap();
    let mut names = Vec::new();
    let mut offset = 0;
    loop {
        let page = fs.readdir(dh, offset).await.unwrap();
        let Some(last) = page.last() else { break };
        offset = last.offset;
        names.extend(
            page.iter()
                .map(|item| String::from_utf8_lossy(&item.name).into_owned()),
        );
    }
    fs.releasedir(dh);
    names.retain(|n| n != "." && n != "..");
    names
}

/// A file created for writing reaches the store with its first close, in one transaction
/// with its content: until then the creating mount sees it and another mount does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_file_and_its_content_are_committed_together_at_close() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::new(local_rig_store(&dir), false).await;
    let writer_blocks = rig.blocks(None);
    let (writer, other) = (rig.mount(writer_blocks.clone()), rig.mount(rig.blocks(None)));
    let data = pattern(3 * MIB + 17, 21);

    let opened = writer
        .create(ROOT_INO, b"take.mov", 0o640, write_flags(), caller())
        .await
        .unwrap();
    writer.write(opened.fh, 0, &data).await.unwrap();
    let seen = writer.lookup_in_store(ROOT_INO, b"take.mov").await.unwrap();
    assert_eq!((seen.ino, seen.size), (opened.attr.ino, data.len() as u64));
    assert_eq!(
        writer.getattr_in_store(seen.ino.0).await.unwrap().mode & 0o777,
        0o640
    );
    let err = other.lookup(ROOT_INO, b"take.mov").await.unwrap_err();
    assert_eq!(
        err.kind(),
        drive::fs::FsErrorKind::NotFound,
        "not visible before close"
    );
    let err = writer
        .create(ROOT_INO, b"take.mov", 0o640, write_flags(), caller())
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        drive::fs::FsErrorKind::Exists,
        "the name is taken here"
    );

    // Each block registered at close is a transaction of its own (the GC claim check); the
    // create and the content are one more, together.
    let registered = |b: &BlockStore| {
        let s = b.stats();
        s.puts.load(std::sync::atomic::Ordering::Relaxed)
            + s.dedup_hits.load(std::sync::atomic::Ordering::Relaxed)
    };
    let commits = rig
        .meta
        .stats()
        .commits
        .load(std::sync::atomic::Ordering::Relaxed);
    let before_registered = registered(&writer_blocks);
    writer.flush(opened.fh, caller()).await.unwrap();
    let after = rig
        .meta
        .stats()
        .commits
        .load(std::sync::atomic::Ordering::Relaxed);
    let registrations = registered(&writer_blocks) - before_registered;
    assert_eq!(
        after - commits - registrations,
        1,
        "create and content in one transaction ({registrations} blocks registered at close)"
    );
    writer.release(opened.fh, caller()).await.unwrap();

    let found = other.lookup(ROOT_INO, b"take.mov").await.unwrap();
    assert_eq!((found.size, found.mode & 0o777), (data.len() as u64, 0o640));
    assert_same(
        &read_file(&other, found.ino.0).await.unwrap(),
        &data,
        "read by the other mount",
    );
    assert_eq!(listed(&other).await, ["take.mov"]);
}

/// Operations that need the file in the store (listing, rename, unlink) commit a deferred
/// create first; an unlinked new file does not come back at its close.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_file_is_committed_before_operations_that_need_it() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::new(local_rig_store(&dir), false).await;
    let (writer, other) = (rig.mount(rig.blocks(None)), rig.mount(rig.blocks(None)));
    let data = pattern(MIB, 22);

    let a = writer
        .create(ROOT_INO, b"a.tmp", 0o644, write_flags(), caller())
        .await
        .unwrap();
    writer.write(a.fh, 0, &data).await.unwrap();
    assert_eq!(listed(&writer).await, ["a.tmp"], "listed while open");
    writer
        .rename(
            ROOT_INO,
            b"a.tmp",
            ROOT_INO,
            b"a.exr",
            drive::model::RenameMode::Replace,
            caller(),
        )
        .await
        .unwrap();
    let b = writer
        .create(ROOT_INO, b"b.tmp", 0o644, write_flags(), caller())
        .await
        .unwrap();
    writer.write(b.fh, 0, &data).await.unwrap();
    writer.unlink(ROOT_INO, b"b.tmp", caller()).await.unwrap();
    for opened in [a, b] {
        writer.flush(opened.fh, caller()).await.unwrap();
        writer.release(opened.fh, caller()).await.unwrap();
    }
    writer.fsyncdir().await.unwrap();

    assert_eq!(listed(&other).await, ["a.exr"]);
    let found = other.lookup(ROOT_INO, b"a.exr").await.unwrap();
    assert_same(
        &read_file(&other, found.ino.0).await.unwrap(),
        &data,
        "renamed while open",
    );
}

/// Two mounts create the same name: the first close wins; the second fails with EEXIST and
/// its bytes are kept under a name of their own, not dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_first_close_of_a_name_created_on_two_mounts_wins() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::new(local_rig_store(&dir), false).await;
    let (one, two) = (rig.mount(rig.blocks(None)), rig.mount(rig.blocks(None)));
    let (first, second) = (pattern(1000, 23), pattern(2000, 24));

    let a = one
        .create(ROOT_INO, b"lock", 0o644, write_flags(), caller())
        .await
        .unwrap();
    one.write(a.fh, 0, &first).await.unwrap();
    let b = two
        .create(ROOT_INO, b"lock", 0o644, write_flags(), caller())
        .await
        .unwrap();
    two.write(b.fh, 0, &second).await.unwrap();
    one.flush(a.fh, caller()).await.unwrap();
    one.release(a.fh, caller()).await.unwrap();
    let err = two.flush(b.fh, caller()).await.unwrap_err();
    assert_eq!(err.kind(), drive::fs::FsErrorKind::Exists, "{err}");
    two.release(b.fh, caller()).await.unwrap();

    let third = rig.mount(rig.blocks(None));
    let kept = format!("lock.conflict-{}", two.to_node(b.attr.ino.0));
    let mut names = listed(&third).await;
    names.sort();
    assert_eq!(names, ["lock".to_string(), kept.clone()]);
    assert!(err.to_string().contains(&kept), "{err}");
    let winner = third.lookup(ROOT_INO, b"lock").await.unwrap();
    assert_same(
        &read_file(&third, winner.ino.0).await.unwrap(),
        &first,
        "the first close's file",
    );
    let copy = third.lookup(ROOT_INO, kept.as_bytes()).await.unwrap();
    assert_same(
        &read_file(&third, copy.ino.0).await.unwrap(),
        &second,
        "the second close's bytes",
    );
    let seen_by_two = two.lookup(ROOT_INO, b"lock").await.unwrap();
    assert_eq!(
        seen_by_two.ino, winner.ino,
        "the losing mount sees the winner's file"
    );
}

/// Another mount removes the (empty, as far as the store knows) folder of a new file before
/// its first close: the close fails and says why, instead of dropping the bytes silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_file_whose_folder_was_removed_fails_its_close() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::new(local_rig_store(&dir), false).await;
    let (one, two) = (rig.mount(rig.blocks(None)), rig.mount(rig.blocks(None)));
    let folder = one.mkdir(ROOT_INO, b"shots", 0o755, caller()).await.unwrap();
    let opened = one
        .create(folder.ino.0, b"a.exr", 0o644, write_flags(), caller())
        .await
        .unwrap();
    one.write(opened.fh, 0, b"frame").await.unwrap();
    two.rmdir(ROOT_INO, b"shots", caller()).await.unwrap();

    let err = one.flush(opened.fh, caller()).await.unwrap_err();
    assert_eq!(err.kind(), drive::fs::FsErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("a.exr"), "{err}");
}

/// `rm f; cp g f`: the removal is write-behind and the create deferred; the new file must
/// take the name after the removal lands, not collide with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_name_created_again_at_once_holds_the_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::new(local_rig_store(&dir), false).await;
    let fs = Arc::new(rig.mount(rig.blocks(None)));
    let committer = {
        let fs = fs.clone();
        tokio::spawn(async move { fs.run_removals(std::future::pending()).await })
    };
    let (old, new) = (pattern(3000, 25), pattern(5000, 26));
    for round in 0..20 {
        write_file(&fs, "f", &old).await;
        // What the mount's change-feed follower does after each poll: the cache may answer
        // (write-behind unlinks need it to know the entry).
        fs.apply_feed(&[], std::time::Instant::now());
        fs.unlink(ROOT_INO, b"f", caller()).await.unwrap();
        let ino = write_file(&fs, "f", &new).await;
        assert_eq!(listed(&fs).await, ["f"], "round {round}");
        let other = rig.mount(rig.blocks(None));
        let found = other.lookup(ROOT_INO, b"f").await.unwrap();
        assert_eq!(found.ino, fs.to_node(ino), "round {round}");
        assert_same(
            &read_file(&other, found.ino.0).await.unwrap(),
            &new,
            "the new file",
        );
        fs.unlink(ROOT_INO, b"f", caller()).await.unwrap();
    }
    committer.abort();
}

/// Uploads sign their bodies only where nothing else checks them in transit: against this
/// plain-HTTP server without request checksums they are signed; unsigned (as over TLS) they
/// are accepted by a real S3 server, single and multipart, and read back intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_uploads_are_signed_only_where_nothing_else_checks_the_body() {
    let server = S3Server::start().unwrap();
    server.create_bucket(BUCKET).unwrap();
    drive_testkit::install_crypto_provider();
    let mut cfg = s3_config(&server);
    assert!(cfg.signs_payloads(), "plain HTTP, no request checksums");
    let unsigned = || {
        server
            .requests()
            .unsigned
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    S3ChunkStore::connect(&cfg)
        .await
        .put("blocks/signed", Bytes::from_static(b"signed"))
        .await
        .unwrap();
    assert_eq!(unsigned(), 0);

    cfg.sign_payloads = Some(false);
    cfg.multipart_threshold = 6 << 20;
    cfg.part_size = 5 << 20;
    let store = S3ChunkStore::connect(&cfg).await;
    let (small, big) = (Bytes::from(pattern(MIB, 27)), Bytes::from(pattern(11 * MIB, 28)));
    store.put("blocks/small", small.clone()).await.unwrap();
    store.put("blocks/big", big.clone()).await.unwrap();
    assert_eq!(unsigned(), 1 + 3, "one PUT and three parts, unsigned");
    assert_eq!(store.get("blocks/small").await.unwrap(), small);
    assert_eq!(store.get("blocks/big").await.unwrap(), big);

    let mut over_tls = S3Config::new(BUCKET).with_endpoint("https://s3.example.net");
    assert!(!over_tls.signs_payloads(), "TLS checks the body");
    over_tls.endpoint = None;
    assert!(!over_tls.signs_payloads(), "the default AWS endpoint is TLS");
    let mut with_checksums = S3Config::new(BUCKET).with_endpoint("http://store.local:9000");
    with_checksums.request_checksums = true;
    assert!(
        !with_checksums.signs_payloads(),
        "request checksums check the body"
    );
}

/// Writes `data` over file `ino` through a new descriptor and closes it; the error of the
/// first failing step (write, flush, then release), if any.
async fn overwrite(fs: &DriveFs<BlockStore>, ino: u64, data: &[u8]) -> Result<(), drive::fs::FsError> {
    let opened = fs.open(ino, write_flags(), caller()).await?;
    let mut result = Ok(());
    for (i, chunk) in data.chunks(MIB).enumerate() {
        // Writes may already fail once background uploads give up; close must fail either way.
        if let Err(e) = fs.write(opened.fh, (i * MIB) as u64, chunk).await {
            result = Err(e);
            break;
        }
    }
    let flushed = fs.flush(opened.fh, caller()).await;
    let released = fs.release(opened.fh, caller()).await;
    result.and(flushed).and(released)
}

// Catches: every block failure reported as EIO (a full store must say ENOSPC, so that
// writers and their operators know to free space rather than retry), an unavailable or
// refusing store reported as success or as ENOSPC, a failed commit that changes the file, and
// a store that stays broken for the mount after the fault is gone. In-process, through the
// object-store port (FaultyChunkStore over MemoryChunkStore).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_faults_fail_close_with_their_own_errno_and_lose_nothing() {
    use drive::data::{FaultyChunkStore, MemoryChunkStore, StoreFault, StoreOp};
    use drive::fs::FsErrorKind;
    let objects = Arc::new(MemoryChunkStore::new());
    let faulty = Arc::new(FaultyChunkStore::new(objects.clone()));
    let rig = Rig::new(faulty.clone(), true).await;
    let fs = rig.mount(rig.blocks(None));
    let v1 = pattern(3 * MIB + 17, 1);
    let ino = write_file(&fs, "shot.exr", &v1).await;
    let stored = objects.len();

    for (n, (fault, errno)) in [
        (StoreFault::NoSpace, FsErrorKind::NoSpace),
        (StoreFault::Unavailable, FsErrorKind::Io),
        (StoreFault::Refused, FsErrorKind::Io),
    ]
    .into_iter()
    .enumerate()
    {
        faulty.set(StoreOp::Put, fault);
        let before = faulty.injected();
        let err = overwrite(&fs, ino, &pattern(2 * MIB + 5, 10 + n as u64))
            .await
            .expect_err("an overwrite while the store fails");
        assert_eq!(err.kind(), errno, "{fault:?}: {}", common::error_chain(&err));
        assert!(faulty.injected() > before, "{fault:?}: the store was asked");
        faulty.clear();
        assert_eq!(objects.len(), stored, "{fault:?}: nothing new was stored");
        assert_same(
            &read_file(&fs, ino).await.unwrap(),
            &v1,
            "same mount after the failure",
        );
        assert_same(
            &read_file(&rig.mount(rig.blocks(None)), ino).await.unwrap(),
            &v1,
            "another mount after the failure",
        );
    }

    // A new file whose first close fails for lack of space is not created.
    faulty.set(StoreOp::Put, StoreFault::NoSpace);
    let opened = fs
        .create(ROOT_INO, b"new.exr", 0o644, write_flags(), caller())
        .await
        .unwrap();
    fs.write(opened.fh, 0, &pattern(MIB, 20)).await.unwrap();
    let err = fs.flush(opened.fh, caller()).await.unwrap_err();
    assert_eq!(err.kind(), FsErrorKind::NoSpace, "{err}");
    let _ = fs.release(opened.fh, caller()).await;
    faulty.clear();
    let lookup = fs
        .lookup(ROOT_INO, b"new.exr")
        .await
        .map(|_| ())
        .map_err(|e| e.kind());
    assert_eq!(lookup, Err(FsErrorKind::NotFound), "the new file is not created");

    // Reads: a store that cannot serve fails the read with EIO, and serves again after.
    let cold = rig.mount(rig.blocks(None));
    faulty.set(StoreOp::Get, StoreFault::Unavailable);
    let err = read_file(&cold, ino).await.unwrap_err();
    assert_eq!(err.kind(), FsErrorKind::Io, "{err}");
    faulty.clear();
    assert_same(
        &read_file(&cold, ino).await.unwrap(),
        &v1,
        "read once the store is back",
    );

    // A slow store is not a failing one: the overwrite commits and reads back whole.
    faulty.set(StoreOp::Put, StoreFault::Slow(Duration::from_millis(30)));
    faulty.set(StoreOp::Get, StoreFault::Slow(Duration::from_millis(30)));
    let v2 = pattern(2 * MIB + 9, 30);
    overwrite(&fs, ino, &v2)
        .await
        .expect("an overwrite on a slow store");
    let mut want = v1.clone();
    want[..v2.len()].copy_from_slice(&v2);
    assert_same(
        &read_file(&rig.mount(rig.blocks(None)), ino).await.unwrap(),
        &want,
        "written through a slow store",
    );
}

// Catches: a failed upload that marks a block failed for everyone (an unconditional state
// write by hash), so another writer of the same block, whose own upload succeeded, fails its
// close with EINVAL and loses its data. Two mounts write one identical block; the upload of
// the second fails; the first must still commit and read back. Over both metadata stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upload_does_not_fail_another_writer_of_the_same_block() {
    let rig = Rig::new(Arc::new(drive::data::MemoryChunkStore::new()), true).await;
    failed_upload_beside_a_successful_one(rig.meta.clone(), rig.ws.clone(), rig.codec.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upload_does_not_fail_another_writer_of_the_same_block_in_memory() {
    let meta = drive::MemMetaStore::new();
    let ws = drive::MetaStore::create_workspace(
        &meta,
        &common::actor(),
        &WorkspaceSpec::new("data", WorkspaceKind::Team),
    )
    .await
    .unwrap();
    let codec = codec_for(&ws, None).unwrap();
    failed_upload_beside_a_successful_one(meta, ws, codec).await;
}

async fn failed_upload_beside_a_successful_one<M: drive::MetaStore>(
    meta: M,
    ws: Workspace,
    codec: BlockCodec,
) {
    use drive::data::{FaultyChunkStore, MemoryChunkStore, StoreFault, StoreOp};
    use drive::fs::FsErrorKind;
    let tmp = tempfile::tempdir().unwrap();
    let mount = |store: Arc<dyn ChunkStore>, n: u32| {
        let blocks = BlockStore::new(meta.clone(), store, codec.clone(), None);
        let cfg = FsConfig::new(View::Live, ws.root, tmp.path().join(format!("staging-{n}")));
        (
            blocks.clone(),
            DriveFs::new(meta.clone(), Arc::new(blocks), ws.clone(), cfg).unwrap(),
        )
    };
    let objects = Arc::new(MemoryChunkStore::new());
    let (good, fs_good) = mount(objects.clone(), 1);
    let faulty = Arc::new(FaultyChunkStore::new(objects.clone()));
    faulty.set(StoreOp::Put, StoreFault::Refused);
    let (_, fs_failing) = mount(faulty.clone(), 2);
    // One whole block: its upload starts in the background while the file is still open.
    let block = pattern(drive::model::DEFAULT_BLOCK_SIZE as usize, 77);

    let kept = fs_good
        .create(ROOT_INO, b"kept.exr", 0o644, write_flags(), caller())
        .await
        .unwrap();
    fs_good.write(kept.fh, 0, &block).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while good
        .stats()
        .bytes_uploaded
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the first upload never finished"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let lost = fs_failing
        .create(ROOT_INO, b"lost.exr", 0o644, write_flags(), caller())
        .await
        .unwrap();
    let written = fs_failing.write(lost.fh, 0, &block).await;
    let flushed = fs_failing.flush(lost.fh, caller()).await;
    let _ = fs_failing.release(lost.fh, caller()).await;
    let err = written
        .and(flushed)
        .expect_err("the refused upload fails its writer");
    assert_eq!(err.kind(), FsErrorKind::Io, "{}", common::error_chain(&err));
    assert!(faulty.injected() > 0, "the failing mount tried to upload");

    fs_good
        .flush(kept.fh, caller())
        .await
        .unwrap_or_else(|e| panic!("the successful writer's close: {}", common::error_chain(&e)));
    fs_good.release(kept.fh, caller()).await.unwrap();
    let ino = fs_good.to_ino(kept.attr.ino);
    let (_, fresh) = mount(objects.clone(), 3);
    let back = read_file(&fresh, ino).await.unwrap();
    assert_same(&back, &block, "the successful writer's file on another mount");
}

// Catches: an S3 "storage full" answer (HTTP 507, MinIO's XMinioStorageFull) classified as
// a transient outage (EIO) instead of ENOSPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_s3_store_fails_close_with_enospc() {
    let server = S3Server::start().unwrap();
    let rig = Rig::new(s3_store(&server).await, false).await;
    let fs = rig.mount(rig.blocks(None));
    let v1 = pattern(2 * MIB, 1);
    let ino = write_file(&fs, "shot.exr", &v1).await;
    server.faults().always(Some("PUT"), Fault::Status(507));
    let err = overwrite(&fs, ino, &pattern(2 * MIB, 2)).await.unwrap_err();
    assert_eq!(
        err.kind(),
        drive::fs::FsErrorKind::NoSpace,
        "{}",
        common::error_chain(&err)
    );
    server.faults().clear();
    assert_same(&read_file(&fs, ino).await.unwrap(), &v1, "old content");
}

// Catches: a directory handle that forgets entries it still needs (a window trimmed under the
// page being read, a repeated request at the same offset answered from the wrong index) and
// one that cannot go back once the window moved on (rewinddir and seekdir to a cookie before
// the window must list from there again, complete and in order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_handle_keeps_a_window_and_still_seeks_back() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::new(local_rig_store(&dir), false).await;
    let n = 2_345;
    let node = drive::model::NewNode::new(drive::model::NodeKind::File, 0o644);
    let mut want: Vec<String> = (0..n).map(|i| format!("f{i:05}")).collect();
    futures::future::try_join_all(want.chunks(200).map(|chunk| {
        let (meta, ws, node) = (rig.meta.clone(), rig.ws.clone(), node.clone());
        async move {
            for name in chunk {
                meta.create(&common::actor(), ws.id, ws.root, &common::name(name), &node)
                    .await?;
            }
            Ok::<_, drive::MetaError>(())
        }
    }))
    .await
    .unwrap();
    want.sort();
    let fs = rig.mount(rig.blocks(None));
    assert_eq!(
        listed(&fs).await,
        want,
        "one pass lists every entry once, in order"
    );

    let names = |items: &[drive::fs::DirItem]| -> Vec<String> {
        items
            .iter()
            .map(|i| String::from_utf8_lossy(&i.name).into_owned())
            .filter(|n| n != "." && n != "..")
            .collect()
    };
    let dh = fs.opendir(ROOT_INO).await.unwrap();
    // Read to the end, remembering each page's starting cookie.
    let mut pages = Vec::new();
    let mut offset = 0;
    loop {
        let page = fs.readdir(dh, offset).await.unwrap();
        let Some(last) = page.last() else { break };
        pages.push((offset, names(&page)));
        offset = last.offset;
    }
    assert!(pages.len() >= 3, "the listing spans more than the window");
    // The last page asked again: the same entries.
    let (last_offset, last_names) = pages.last().unwrap().clone();
    assert_eq!(names(&fs.readdir(dh, last_offset).await.unwrap()), last_names);
    // The first page, long out of the window: listed again from the start.
    let (_, first_names) = &pages[0];
    let again = fs.readdir(dh, 0).await.unwrap();
    assert_eq!(&names(&again), first_names, "rewinddir");
    assert_eq!(String::from_utf8_lossy(&again[0].name), ".");
    // A cookie in the middle of an early page (seekdir back): from that entry on.
    let (second_offset, second_names) = &pages[1];
    let mid = second_offset + 10;
    let from_mid = fs.readdir(dh, mid).await.unwrap();
    assert_eq!(
        names(&from_mid)[0],
        second_names[10],
        "seekdir into an earlier page"
    );
    // And onward from there to the end, nothing lost or repeated.
    let mut rest = names(&from_mid);
    let mut offset = from_mid.last().unwrap().offset;
    loop {
        let page = fs.readdir(dh, offset).await.unwrap();
        let Some(last) = page.last() else { break };
        rest.extend(names(&page));
        offset = last.offset;
    }
    let start = want.iter().position(|n| *n == second_names[10]).unwrap();
    assert_eq!(rest, want[start..], "the listing from the seek to the end");
    fs.releasedir(dh);
}

/// A rig on a fault-injecting in-memory store with six files `{prefix}{i}` of `size(block
/// size)` bytes each, distinct content, written through a mount of their own.
async fn six_files_on_a_faulty_store(
    prefix: &str,
    size: impl Fn(usize) -> usize,
) -> (Arc<drive::data::FaultyChunkStore>, Rig, Vec<(u64, Vec<u8>)>) {
    use drive::data::{FaultyChunkStore, MemoryChunkStore};
    let faulty = Arc::new(FaultyChunkStore::new(Arc::new(MemoryChunkStore::new())));
    let rig = Rig::new(faulty.clone(), false).await;
    let writer = rig.mount(rig.blocks(None));
    let bs = rig.ws.block_size as usize;
    let mut files = Vec::new();
    for i in 0..6 {
        let data = pattern(size(bs), 40 + i);
        files.push((write_file(&writer, &format!("{prefix}{i}"), &data).await, data));
    }
    (faulty, rig, files)
}

/// Releases each of `handles`.
async fn release_all(fs: &DriveFs<BlockStore>, handles: Vec<u64>) {
    for fh in handles {
        fs.release(fh, caller()).await.unwrap();
    }
}

/// Opens each of `files` for reading; their handles, in order.
async fn open_read_only(fs: &DriveFs<BlockStore>, files: &[(u64, Vec<u8>)]) -> Vec<u64> {
    let read_only = OpenFlags {
        read: true,
        ..OpenFlags::default()
    };
    let mut handles = Vec::new();
    for (ino, _) in files {
        handles.push(fs.open(*ino, read_only, caller()).await.unwrap().fh);
    }
    handles
}

// Catches: open files that each keep the block they read between reads whatever their number
// (200 open files of 4 MiB blocks held 830 MiB in a mount): beyond the mount's read buffers a
// file keeps nothing, and its next read in the same block fetches the block again. Without a
// memory cache, each such read is a GET, which is what this counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_files_keep_blocks_only_within_the_read_buffers() {
    // One block each: nothing to prefetch.
    let (faulty, rig, files) = six_files_on_a_faulty_store("slate", |bs| bs - 100).await;
    let bs = rig.ws.block_size as usize;
    let buffers = 2;
    let fs = rig.mount_with(rig.blocks(None), |cfg| {
        cfg.read_buffer_bytes = buffers * bs as u64;
    });
    let handles = open_read_only(&fs, &files).await;
    let before = faulty.gets();
    let half = (bs / 2) as u32;
    let mut got: Vec<Vec<u8>> = vec![Vec::new(); files.len()];
    for _ in 0..2 {
        for (i, fh) in handles.iter().enumerate() {
            let page = fs.read(*fh, got[i].len() as u64, half).await.unwrap();
            got[i].extend_from_slice(&page);
        }
    }
    for (i, (_, data)) in files.iter().enumerate() {
        assert_same(&got[i], data, &format!("slate{i}.dpx"));
    }
    let files_n = files.len() as u64;
    assert_eq!(
        faulty.gets() - before,
        files_n + (files_n - buffers),
        "one GET per file, and one more per file beyond the {buffers} read buffers"
    );
    release_all(&fs, handles).await;
}

// Catches: prefetch that grows with the number of open files (each sequential reader's
// window fetched regardless of the mount's budget), and a budget that, once spent, stalls or
// corrupts reads (a reader must then fetch what it reads, and every byte must still be right).
// The store is slow, so prefetches overlap and the most GETs at once measures what the
// mount holds in flight: the budget's blocks plus the one read waiting in the foreground.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_stays_within_the_mount_budget_across_many_readers() {
    use drive::data::{StoreFault, StoreOp};
    let (faulty, rig, files) = six_files_on_a_faulty_store("plate", |bs| 5 * bs + 100).await;
    let bs = rig.ws.block_size as usize;
    // Each of the 6 readers keeps the block it reads and may fetch 2 ahead (its even share).
    let budget_blocks = 18;
    let fs = rig.mount_with(rig.blocks(None), |cfg| {
        cfg.read_buffer_bytes = budget_blocks * bs as u64;
    });
    faulty.set(StoreOp::Get, StoreFault::Slow(Duration::from_millis(40)));
    let handles = open_read_only(&fs, &files).await;
    let mut got: Vec<Vec<u8>> = vec![Vec::new(); files.len()];
    // Every reader reads sequentially, one request in turn, so all windows grow at once.
    let chunk = (bs / 2) as u32;
    loop {
        let mut progressed = false;
        for (i, fh) in handles.iter().enumerate() {
            let page = fs.read(*fh, got[i].len() as u64, chunk).await.unwrap();
            progressed |= !page.is_empty();
            got[i].extend_from_slice(&page);
        }
        if !progressed {
            break;
        }
    }
    for (i, (_, data)) in files.iter().enumerate() {
        assert_same(&got[i], data, &format!("plate{i}.exr"));
    }
    let most = faulty.most_gets_in_flight();
    assert!(most >= 2, "the readers prefetched at all ({most} GETs at once)");
    assert!(
        most <= budget_blocks + 1,
        "{most} GETs at once: more than the budget's {budget_blocks} blocks and one read"
    );
    release_all(&fs, handles).await;
}

// Catches: a sequential reader whose window takes every read buffer, again each time one is
// given back, so that another file being read keeps no block between reads and fetches the
// block it reads once per request (the mixed load's readers read at a fraction of their
// rate, refetching through the memory cache). Each file read gets an even share instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_buffers_are_shared_among_the_files_being_read() {
    use drive::data::{FaultyChunkStore, MemoryChunkStore};
    let faulty = Arc::new(FaultyChunkStore::new(Arc::new(MemoryChunkStore::new())));
    let rig = Rig::new(faulty.clone(), false).await;
    let bs = rig.ws.block_size as usize;
    let blocks_per_file = 8;
    let writer = rig.mount(rig.blocks(None));
    let mut files = Vec::new();
    for i in 0..2 {
        let data = pattern(blocks_per_file * bs, 70 + i);
        files.push((write_file(&writer, &format!("comp{i}.exr"), &data).await, data));
    }
    let budget_blocks = 4;
    let fs = rig.mount_with(rig.blocks(None), |cfg| {
        cfg.read_buffer_bytes = budget_blocks * bs as u64;
    });
    let handles = open_read_only(&fs, &files).await;
    let before = faulty.gets();
    let quarter = (bs / 4) as u32;
    let mut got: Vec<Vec<u8>> = vec![Vec::new(); files.len()];
    let read_next = async |i: usize, got: &mut Vec<Vec<u8>>| {
        let page = fs.read(handles[i], got[i].len() as u64, quarter).await.unwrap();
        got[i].extend_from_slice(&page);
        !page.is_empty()
    };
    // The first file alone for one block: its window opens over the whole budget.
    for _ in 0..4 {
        read_next(0, &mut got).await;
    }
    // Then both in turn, to their ends.
    while read_next(0, &mut got).await | read_next(1, &mut got).await {}
    for (i, (_, data)) in files.iter().enumerate() {
        assert_same(&got[i], data, &format!("comp{i}.exr"));
    }
    let gets = faulty.gets() - before;
    let blocks = (files.len() * blocks_per_file) as u64;
    // The second file may read its first block or so without a buffer, until the first file
    // gives back what it held beyond its share.
    assert!(
        gets <= blocks + 4,
        "{gets} GETs for {blocks} blocks: a file kept no block between its reads"
    );
    release_all(&fs, handles).await;
}

// Catches: files opened and read at one place (a compositor reading the headers of its
// inputs) taking shares of the read buffers, so that the one file read sequentially gets no
// prefetch at all. The store is slow, so prefetches overlap and show as GETs at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_read_at_one_place_take_no_share_of_the_read_buffers() {
    use drive::data::{StoreFault, StoreOp};
    let (faulty, rig, files) = six_files_on_a_faulty_store("deck", |bs| 5 * bs + 100).await;
    let bs = rig.ws.block_size as usize;
    // Five headers keep their first block each, which leaves three for the sixth file.
    let fs = rig.mount_with(rig.blocks(None), |cfg| {
        cfg.read_buffer_bytes = 8 * bs as u64;
    });
    let handles = open_read_only(&fs, &files).await;
    for fh in &handles[..5] {
        let header = fs.read(*fh, 0, 4096).await.unwrap();
        assert_eq!(header.len(), 4096);
    }
    faulty.set(StoreOp::Get, StoreFault::Slow(Duration::from_millis(40)));
    let (last, data) = (handles[5], &files[5].1);
    let mut got = Vec::new();
    loop {
        let page = fs.read(last, got.len() as u64, (bs / 2) as u32).await.unwrap();
        if page.is_empty() {
            break;
        }
        got.extend_from_slice(&page);
    }
    assert_same(&got, data, "deck5");
    let most = faulty.most_gets_in_flight();
    assert!(
        most >= 2,
        "the sequential reader fetched ahead ({most} GETs at once)"
    );
    release_all(&fs, handles).await;
}

/// Reads `len` bytes at `offset` of `ino` through a fresh open, so the read is a seek.
async fn read_at(
    fs: &DriveFs<BlockStore>,
    ino: u64,
    offset: u64,
    len: u64,
) -> Result<Bytes, drive::fs::FsError> {
    let flags = OpenFlags {
        read: true,
        ..OpenFlags::default()
    };
    let opened = fs.open(ino, flags, caller()).await?;
    let result = fs.read(opened.fh, offset, len as u32).await;
    fs.release(opened.fh, caller()).await?;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_reads_fetch_and_verify_only_the_frames_they_touch() {
    use std::sync::atomic::Ordering::Relaxed;
    const FRAME: u64 = drive::data::format::FRAME_LEN as u64;
    let server = S3Server::start().unwrap();
    let store = s3_store(&server).await;
    for encrypted in [false, true] {
        let rig = Rig::new(store.clone(), encrypted).await;
        let bs = u64::from(rig.ws.block_size);
        let len = 2 * bs + 3 * FRAME + 100;
        let data = pattern(len as usize, 21);
        let ino = write_file(&rig.mount(rig.blocks(None)), "frames", &data).await;
        // Offset classes: on, across and just before frame boundaries; a block's last bytes
        // and the next block's first; the file's last, partial frame; across blocks.
        let reads = [
            (FRAME, 4096),
            (FRAME - 100, 200),
            (3 * FRAME - 1, 1),
            (bs - 4096, 4096),
            (bs, 4096),
            (2 * bs + 3 * FRAME, 100),
            (len - 1, 1),
            (bs - 10, 20),
        ];
        let read_all = async |what: &str, ranged: bool| {
            for (offset, n) in reads {
                let blocks = rig.blocks(None);
                let got = read_at(&rig.mount(blocks.clone()), ino, offset, n).await.unwrap();
                let want = &data[offset as usize..(offset + n) as usize];
                assert_same(&got, want, &format!("{what}: {n} bytes at {offset}"));
                let downloaded = blocks.stats().bytes_downloaded.load(Relaxed);
                let one_block = offset / bs == (offset + n - 1) / bs;
                if ranged && one_block {
                    assert!(
                        downloaded < 3 * FRAME,
                        "{what}: {downloaded} bytes fetched for {n} at {offset}"
                    );
                } else if one_block && offset < 2 * bs {
                    assert!(downloaded >= bs, "{what}: a version 1 block is fetched whole");
                }
            }
        };
        read_all("version 2", true).await;
        // A second random read in a block fetches only its frames: the table is kept.
        let fs = rig.mount(rig.blocks(None));
        let gets = server.requests().gets();
        for (offset, expected_gets) in [(5 * FRAME, 2), (9 * FRAME + 5, 3), (bs + FRAME, 5)] {
            let got = read_at(&fs, ino, offset, 4096).await.unwrap();
            assert_same(&got, &data[offset as usize..offset as usize + 4096], "table kept");
            assert_eq!(
                server.requests().gets() - gets,
                expected_gets,
                "GETs after the read at {offset}"
            );
        }

        // Blocks of format version 1 (as older releases wrote them) read the same, whole.
        let objects = bucket_objects(&server);
        let file_blocks = rig
            .meta
            .block_map(View::Live, drive::model::NodeId(ino), 0, 16)
            .await
            .unwrap();
        assert_eq!(file_blocks.len(), 3);
        let object_of = |hash: &[u8; 32]| {
            let name = drive::data::format::hash_hex(hash);
            objects
                .keys()
                .find(|p| p.file_name().unwrap().to_str() == Some(name.as_str()))
                .unwrap()
                .clone()
        };
        for b in &file_blocks {
            let path = object_of(&b.hash);
            let plaintext = rig
                .codec
                .decode(&b.hash, Bytes::from(objects[&path].clone()))
                .unwrap();
            std::fs::write(&path, rig.codec.encode_version1(&b.hash, &plaintext)).unwrap();
        }
        read_all("version 1", false).await;

        // One damaged frame (frame 1 of block 0): reads that touch it fail with EIO, and only
        // those; a read from the start of the block still answers from its intact frame 0.
        for b in &file_blocks {
            let path = object_of(&b.hash);
            std::fs::write(&path, &objects[&path]).unwrap();
        }
        let victim = object_of(&file_blocks[0].hash);
        let mut bytes = objects[&victim].clone();
        let body_start = rig.codec.stored_len(bs as usize) - bs as usize;
        bytes[body_start + FRAME as usize + 10] ^= 0x20;
        std::fs::write(&victim, &bytes).unwrap();
        for (offset, n, damaged) in [
            (FRAME, 4096, true),
            (FRAME - 100, 200, true),
            (0, 1 << 20, true),
            (0, 4096, false),
            (FRAME - 4096, 4096, false),
            (2 * FRAME, 4096, false),
            (bs - 4096, 4096, false),
            (bs, 4096, false),
        ] {
            let fs = rig.mount(rig.blocks(None));
            match read_at(&fs, ino, offset, n).await {
                Ok(got) => {
                    assert!(!damaged, "{n} bytes at {offset} touch the damaged frame but read");
                    assert_same(
                        &got,
                        &data[offset as usize..(offset + n) as usize],
                        "beside the damage",
                    );
                }
                Err(e) => {
                    assert!(
                        damaged,
                        "{n} bytes at {offset} failed: {}",
                        common::error_chain(&e)
                    );
                    assert_eq!(e.kind(), drive::fs::FsErrorKind::Io);
                }
            }
        }

        // The object stored again, as after a collection and a new write of the same content
        // (an encrypted block gets a fresh nonce, so new tags): a kept table is fetched anew.
        std::fs::write(&victim, &objects[&victim]).unwrap();
        let fs = rig.mount(rig.blocks(None));
        let read = |offset: u64| {
            let fs = &fs;
            async move { read_at(fs, ino, offset, 4096).await.unwrap() }
        };
        assert_same(
            &read(2 * FRAME).await,
            &data[2 * FRAME as usize..][..4096],
            "before",
        );
        let plaintext = &data[..bs as usize];
        std::fs::write(&victim, rig.codec.encode(&file_blocks[0].hash, plaintext)).unwrap();
        assert_same(
            &read(6 * FRAME).await,
            &data[6 * FRAME as usize..][..4096],
            "stored again",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_reads_of_cached_blocks_read_and_verify_only_their_frames() {
    const FRAME: u64 = drive::data::format::FRAME_LEN as u64;
    let server = S3Server::start().unwrap();
    let store = s3_store(&server).await;
    for encrypted in [false, true] {
        let rig = Rig::new(store.clone(), encrypted).await;
        let blocks = rig.blocks(Some(1 << 30));
        let cache = blocks.cache().unwrap().clone();
        let data = pattern(6 * MIB, 5);
        let ino = write_file(&rig.mount(blocks.clone()), "cached", &data).await;
        let gets = server.requests().gets();
        let hit_bytes = cache.stats().hit_bytes.load(std::sync::atomic::Ordering::Relaxed);
        for (offset, n) in [
            (FRAME + 7, 4096),
            (5 * MIB as u64 - 1, 1),
            (6 * MIB as u64 - 4096, 4096),
        ] {
            let got = read_at(&rig.mount(blocks.clone()), ino, offset, n).await.unwrap();
            assert_same(
                &got,
                &data[offset as usize..(offset + n) as usize],
                "cached frames",
            );
        }
        assert_eq!(server.requests().gets(), gets, "served from the cache");
        let read = cache.stats().hit_bytes.load(std::sync::atomic::Ordering::Relaxed) - hit_bytes;
        assert!(
            read < 3 * (2 * FRAME),
            "{read} bytes of the cache read for three small reads"
        );

        // A damaged frame in a cache entry: the read fetches the frames from the store instead
        // (right bytes), and the entry is dropped.
        let entries: Vec<PathBuf> = walk(cache.dir())
            .into_iter()
            .filter(|p| !p.starts_with(cache.dir().join(".tmp")))
            .collect();
        for entry in &entries {
            let mut bytes = std::fs::read(entry).unwrap();
            let at = bytes.len() - 8 - 100; // inside the last frame of the block
            bytes[at] ^= 0x08;
            std::fs::write(entry, &bytes).unwrap();
        }
        let gets = server.requests().gets();
        let got = read_at(&rig.mount(blocks.clone()), ino, 6 * MIB as u64 - 50, 50)
            .await
            .unwrap();
        assert_same(&got, &data[6 * MIB - 50..], "past a damaged cache entry");
        assert_eq!(
            server.requests().gets() - gets,
            2,
            "the frames and their table fetched"
        );
    }
}
