//! The front door (`drive::mount`): resolving and opening mounts over the in-memory metadata
//! and object stores (no server). Content written through one opened mount is read back
//! through another; every refusal leaves the stores and the disk as they were.

use std::path::Path;
use std::sync::Arc;

use drive::cache::CacheConfig;
use drive::data::{ChunkStore, Kek, KeyError, MemoryChunkStore};
use drive::fs::{Caller, DriveFs, FsErrorKind, OpenFlags, ROOT_INO};
use drive::model::{Actor, MIN_BLOCK_SIZE, View};
use drive::mount::{
    self, DiskCache, MountError, MountPath, MountSpec, MountTarget, NewWorkspace, OpenedMount,
};
use drive::{ErrorKind, MemMetaStore, MetaStore};

type Fs = DriveFs<drive::data::BlockStore<MemMetaStore>, MemMetaStore>;

struct Rig {
    meta: MemMetaStore,
    chunks: Arc<dyn ChunkStore>,
    dir: tempfile::TempDir,
}

impl Rig {
    fn new() -> Rig {
        Rig {
            meta: MemMetaStore::new(),
            chunks: Arc::new(MemoryChunkStore::new()),
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// A spec with a disk cache and staging under this rig's directory, `tag` naming them.
    fn spec(&self, workspace: &str, path: MountPath, snapshot: Option<&str>, tag: &str) -> MountSpec {
        let target = MountTarget {
            workspace: workspace.into(),
            path,
            snapshot: snapshot.map(Into::into),
        };
        let mut spec = MountSpec::new(target, self.dir.path().join(format!("staging-{tag}")));
        let mut cache = CacheConfig::new(self.dir.path().join(format!("cache-{tag}")), 64 << 20);
        cache.min_free_ratio = 0.0;
        spec.disk_cache = DiskCache::Open(cache);
        spec.memory_cache_bytes = 8 << 20;
        spec
    }

    fn creating(mut spec: MountSpec) -> MountSpec {
        spec.create = Some(NewWorkspace {
            block_size: MIN_BLOCK_SIZE,
            encrypted: false,
        });
        spec
    }

    async fn open(&self, spec: &MountSpec) -> Result<OpenedMount<MemMetaStore>, MountError> {
        mount::open(self.meta.clone(), self.chunks.clone(), spec).await
    }

    /// Whether anything of the mount tagged `tag` was made on disk.
    fn touched(&self, tag: &str) -> bool {
        let d = self.dir.path();
        d.join(format!("staging-{tag}")).exists() || d.join(format!("cache-{tag}")).exists()
    }
}

fn live(path: &str) -> MountPath {
    MountPath::Workspace(path.into())
}

fn caller() -> Caller {
    Caller::default()
}

/// Creates `dir/.../name` (folders as needed) below the mount's root with `data`, committed.
async fn put(fs: &Fs, path: &str, data: &[u8]) {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let (name, dirs) = parts.split_last().expect("a file name");
    let mut dir = ROOT_INO;
    for part in dirs {
        let attr = match fs.lookup(dir, part.as_bytes()).await {
            Ok(attr) => attr,
            Err(_) => fs
                .mkdir(dir, part.as_bytes(), 0o755, caller())
                .await
                .expect("mkdir"),
        };
        dir = fs.to_ino(attr.ino);
    }
    let flags = OpenFlags {
        read: true,
        write: true,
        truncate: true,
        ..OpenFlags::default()
    };
    let opened = match fs.lookup(dir, name.as_bytes()).await {
        Ok(attr) => fs.open(fs.to_ino(attr.ino), flags, caller()).await,
        Err(_) => fs.create(dir, name.as_bytes(), 0o644, flags, caller()).await,
    }
    .expect("open for writing");
    fs.write(opened.fh, 0, data).await.expect("write");
    fs.flush(opened.fh, caller()).await.expect("flush");
    fs.release(opened.fh, caller()).await.expect("release");
}

/// The content of `path` below the mount's root.
async fn get(fs: &Fs, path: &str) -> Result<Vec<u8>, FsErrorKind> {
    let mut ino = ROOT_INO;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        ino = fs.to_ino(fs.lookup(ino, part.as_bytes()).await.map_err(|e| e.kind())?.ino);
    }
    let read = OpenFlags {
        read: true,
        ..OpenFlags::default()
    };
    let opened = fs.open(ino, read, caller()).await.map_err(|e| e.kind())?;
    let mut out = Vec::new();
    loop {
        let chunk = fs
            .read(opened.fh, out.len() as u64, 64 << 10)
            .await
            .map_err(|e| e.kind())?;
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    fs.release(opened.fh, caller()).await.map_err(|e| e.kind())?;
    Ok(out)
}

fn workspace_missing(meta: &MemMetaStore, name: &str) -> bool {
    let rt = tokio::runtime::Handle::current();
    let meta = meta.clone();
    let name = name.to_string();
    tokio::task::block_in_place(move || rt.block_on(meta.get_workspace(&name)))
        .is_err_and(|e| e.kind() == ErrorKind::NotFound)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_path_opens_and_what_one_mount_writes_another_reads() {
    let rig = Rig::new();
    let first = rig
        .open(&Rig::creating(rig.spec("studio", live("/"), None, "a")))
        .await
        .expect("open, creating the workspace");
    assert_eq!(first.resolved.view, View::Live);
    assert_eq!(first.resolved.path, "/");
    assert!(!first.read_only && first.resolved.snapshot.is_none());
    assert_eq!(first.resolved.workspace.block_size, MIN_BLOCK_SIZE);
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    put(&first.fs, "/shots/010/comp.nk", &data).await;
    first.fs.flush_all().await.expect("flush_all");
    assert!(
        first
            .blocks
            .stats()
            .puts
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );

    // A second open of a folder inside, without creation: the same workspace, the content.
    let second = rig
        .open(&rig.spec("studio", live("/shots/010/"), None, "b"))
        .await
        .expect("open a folder");
    assert_eq!(second.resolved.workspace.id, first.resolved.workspace.id);
    assert_eq!(second.resolved.path, "/shots/010");
    assert_eq!(get(&second.fs, "comp.nk").await, Ok(data.clone()));
    // The same folder, given from the root: nothing differs without a snapshot.
    let third = rig
        .open(&rig.spec("studio", MountPath::FromRoot("shots//010".into()), None, "c"))
        .await
        .expect("open from the root");
    assert_eq!(third.resolved.root.ino, second.resolved.root.ino);

    // A creating open of an existing workspace reuses it.
    let again = rig
        .open(&Rig::creating(rig.spec("studio", live("/"), None, "d")))
        .await
        .expect("open again");
    assert_eq!(again.resolved.workspace.id, first.resolved.workspace.id);
    assert_eq!(get(&again.fs, "/shots/010/comp.nk").await, Ok(data));

    // A read-only open refuses changes.
    let mut spec = rig.spec("studio", live("/shots"), None, "e");
    spec.read_only = true;
    let ro = rig.open(&spec).await.expect("read-only open");
    assert!(ro.read_only);
    let err = ro.fs.mkdir(ROOT_INO, b"new", 0o755, caller()).await.unwrap_err();
    assert_eq!(err.kind(), FsErrorKind::ReadOnly);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_a_folder_is_rooted_there() {
    let rig = Rig::new();
    let live_mount = rig
        .open(&Rig::creating(rig.spec("studio", live("/"), None, "live")))
        .await
        .expect("open");
    put(&live_mount.fs, "/shots/010/comp.nk", b"take 1").await;
    put(&live_mount.fs, "/other/notes.txt", b"elsewhere").await;
    live_mount.fs.flush_all().await.expect("flush_all");
    let ws = live_mount.resolved.workspace.clone();
    rig.meta
        .create_snapshot(&Actor::system("test"), ws.id, "review-1", "/shots")
        .await
        .expect("snapshot of /shots");
    put(&live_mount.fs, "/shots/010/comp.nk", b"take 2").await;
    live_mount.fs.flush_all().await.expect("flush_all");

    // A workspace path inside the snapshotted folder is taken relative to it.
    let snap = rig
        .open(&rig.spec("studio", live("/shots/010"), Some("review-1"), "s1"))
        .await
        .expect("open the snapshot");
    assert_eq!(snap.resolved.path, "/010");
    assert!(snap.read_only, "a snapshot is read-only");
    assert!(matches!(snap.resolved.view, View::At(_)));
    assert_eq!(get(&snap.fs, "comp.nk").await, Ok(b"take 1".to_vec()));
    assert_eq!(
        get(&live_mount.fs, "/shots/010/comp.nk").await,
        Ok(b"take 2".to_vec())
    );
    let err = snap
        .fs
        .mkdir(ROOT_INO, b"new", 0o755, caller())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), FsErrorKind::ReadOnly);

    // The path the front door returns mounts the same folder again (what the CSI node hands
    // its mount process), and the snapshot's folder itself is "/".
    let again = mount::resolve(
        &rig.meta,
        &MountTarget {
            workspace: "studio".into(),
            path: MountPath::FromRoot(snap.resolved.path.clone()),
            snapshot: Some("review-1".into()),
        },
    )
    .await
    .expect("resolve from the snapshot's root");
    assert_eq!(again.root.ino, snap.resolved.root.ino);
    let top = mount::resolve(
        &rig.meta,
        &MountTarget {
            workspace: "studio".into(),
            path: live("/shots/"),
            snapshot: Some("review-1".into()),
        },
    )
    .await
    .expect("resolve the snapshotted folder");
    assert_eq!(top.path, "/");

    // A path outside the snapshotted folder is refused, before anything is made.
    for outside in ["/other", "/shots-old", "/"] {
        let err = rig
            .open(&rig.spec("studio", live(outside), Some("review-1"), "out"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, MountError::OutsideSnapshot { snapshot, taken_of, .. }
                if snapshot == "review-1" && taken_of == "/shots"),
            "{outside}: {err}"
        );
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(
            !rig.touched("out"),
            "a refused open makes no staging or cache directory"
        );
    }
    assert_eq!(
        rig.open(&rig.spec("studio", live("/other"), Some("review-1"), "out"))
            .await
            .unwrap_err()
            .to_string(),
        "/other is outside snapshot review-1, which was taken of /shots"
    );

    // An unknown snapshot, and a folder the snapshot does not hold.
    let err = rig
        .open(&rig.spec("studio", live("/shots"), Some("nope"), "out"))
        .await
        .unwrap_err();
    assert!(matches!(err, MountError::Snapshot { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let err = rig
        .open(&rig.spec("studio", live("/shots/020"), Some("review-1"), "out"))
        .await
        .unwrap_err();
    assert!(matches!(err, MountError::Path { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(!rig.touched("out"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_or_a_missing_folder_is_no_root() {
    let rig = Rig::new();
    let opened = rig
        .open(&Rig::creating(rig.spec("studio", live("/"), None, "a")))
        .await
        .expect("open");
    put(&opened.fs, "/shots/010/comp.nk", b"a file").await;
    opened.fs.flush_all().await.expect("flush_all");

    let err = rig
        .open(&rig.spec("studio", live("/shots/010/comp.nk"), None, "f"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "/shots/010/comp.nk in workspace studio is not a folder"
    );
    assert_eq!(err.kind(), ErrorKind::NotADirectory);
    let target = MountTarget {
        workspace: "studio".into(),
        path: live("/shots/010/comp.nk"),
        snapshot: None,
    };
    let err = mount::resolve(&rig.meta, &target).await.unwrap_err();
    assert!(matches!(err, MountError::NotAFolder { .. }), "{err}");

    let err = rig
        .open(&rig.spec("studio", live("/shots/missing"), None, "f"))
        .await
        .unwrap_err();
    assert!(matches!(err, MountError::Path { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::NotFound);

    let err = rig
        .open(&rig.spec("studio", live("/shots/../etc"), None, "f"))
        .await
        .unwrap_err();
    assert!(matches!(err, MountError::InvalidPath { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::InvalidName);
    assert!(!rig.touched("f"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_workspace_is_created_only_when_asked_and_only_once() {
    let rig = Rig::new();
    let err = rig
        .open(&rig.spec("new-ws", live("/"), None, "a"))
        .await
        .unwrap_err();
    assert!(matches!(err, MountError::WorkspaceMissing { .. }), "{err}");
    assert_eq!(err.to_string(), "workspace new-ws does not exist or was deleted");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let target = MountTarget {
        workspace: "new-ws".into(),
        path: live("/"),
        snapshot: None,
    };
    let err = mount::resolve(&rig.meta, &target).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(workspace_missing(&rig.meta, "new-ws"), "nothing created");
    assert!(!rig.touched("a"));

    // A new workspace would hold neither a snapshot nor a folder: not created for those.
    for (path, snapshot) in [("/", Some("s1")), ("/shots", None)] {
        let err = rig
            .open(&Rig::creating(rig.spec("new-ws", live(path), snapshot, "a")))
            .await
            .unwrap_err();
        assert!(matches!(err, MountError::WorkspaceMissing { .. }), "{err}");
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(workspace_missing(&rig.meta, "new-ws"), "nothing created");
    }
    assert!(!rig.touched("a"));

    let created = rig
        .open(&Rig::creating(rig.spec("new-ws", live("/"), None, "b")))
        .await
        .expect("created");
    put(&created.fs, "hello.txt", b"hello").await;
    created.fs.flush_all().await.expect("flush_all");
    let reused = rig
        .open(&Rig::creating(rig.spec("new-ws", live("/"), None, "c")))
        .await
        .expect("reused");
    assert_eq!(reused.resolved.workspace.id, created.resolved.workspace.id);
    assert_eq!(get(&reused.fs, "hello.txt").await, Ok(b"hello".to_vec()));
    let all = mount::resolve(&rig.meta, &target).await.expect("resolve");
    assert_eq!(all.workspace.id, created.resolved.workspace.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_workspace_needs_its_key() {
    let rig = Rig::new();
    let kek = Kek::generate();
    let encrypted = |mut spec: MountSpec, kek: Option<&Kek>| {
        spec.create = Some(NewWorkspace {
            block_size: MIN_BLOCK_SIZE,
            encrypted: true,
        });
        spec.kek = kek.cloned();
        spec
    };

    // Creating an encrypted workspace needs a key; refused before anything is created.
    let err = rig
        .open(&encrypted(rig.spec("vault", live("/"), None, "a"), None))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            MountError::Key {
                source: KeyError::KekRequired(_),
                ..
            }
        ),
        "{err}"
    );
    assert!(workspace_missing(&rig.meta, "vault"));
    assert!(!rig.touched("a"));

    let created = rig
        .open(&encrypted(rig.spec("vault", live("/"), None, "b"), Some(&kek)))
        .await
        .expect("create encrypted");
    assert!(created.resolved.workspace.wrapped_key.is_some());
    put(&created.fs, "/secret.txt", b"plaintext nobody stores").await;
    created.fs.flush_all().await.expect("flush_all");

    // Without a key, or with another one: refused with a key error, before any cache opens.
    let err = rig
        .open(&rig.spec("vault", live("/"), None, "c"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            MountError::Key {
                source: KeyError::KekRequired(_),
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    let mut wrong = rig.spec("vault", live("/"), None, "c");
    wrong.kek = Some(Kek::generate());
    let err = rig.open(&wrong).await.unwrap_err();
    assert!(
        matches!(
            &err,
            MountError::Key {
                source: KeyError::WrongKek,
                ..
            }
        ),
        "{err}"
    );
    assert!(!rig.touched("c"));

    // With it, the content reads back (and resolving alone needs no key).
    let mut right = rig.spec("vault", live("/"), None, "d");
    right.kek = Some(kek);
    let opened = rig.open(&right).await.expect("open with the key");
    assert_eq!(
        get(&opened.fs, "secret.txt").await,
        Ok(b"plaintext nobody stores".to_vec())
    );
    let target = MountTarget {
        workspace: "vault".into(),
        path: live("/"),
        snapshot: None,
    };
    mount::resolve(&rig.meta, &target)
        .await
        .expect("resolve without a key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opened_cache_is_shared() {
    let rig = Rig::new();
    let opened = rig
        .open(&Rig::creating(rig.spec("studio", live("/"), None, "a")))
        .await
        .expect("open");
    let cache = opened.blocks.cache().expect("a disk cache").clone();
    let mut spec = rig.spec("studio", live("/"), None, "b");
    spec.disk_cache = DiskCache::Opened(cache.clone());
    let second = rig.open(&spec).await.expect("open with the opened cache");
    assert!(Arc::ptr_eq(second.blocks.cache().expect("a disk cache"), &cache));
    assert!(!Path::new(&rig.dir.path().join("cache-b")).exists());
}

/// Full blocks a mount uploads stay out of its disk cache unless `cache_large_writes`; the
/// tail of a file is cached either way, and a full block is cached once it is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_uploaded_blocks_are_cached_only_when_asked() {
    let rig = Rig::new();
    let block = MIN_BLOCK_SIZE as usize;
    let file = |seed: u32| -> Vec<u8> {
        (0..block * 5 / 2)
            .map(|i| {
                ((i as u32).wrapping_add(seed << 24))
                    .wrapping_mul(2_654_435_761)
                    .to_le_bytes()[3]
            })
            .collect()
    };
    let cached = |m: &OpenedMount<MemMetaStore>| m.blocks.cache().expect("a disk cache").len();

    let mut spec = Rig::creating(rig.spec("studio", live("/"), None, "default"));
    spec.memory_cache_bytes = 0; // reads below reach the disk cache or the store
    assert!(!spec.cache_large_writes, "off by default");
    let default = rig.open(&spec).await.expect("open");
    assert_eq!(default.resolved.workspace.block_size, MIN_BLOCK_SIZE);
    let first = file(1);
    put(&default.fs, "/first.exr", &first).await;
    default.fs.flush_all().await.expect("flush_all");
    assert_eq!(
        default
            .blocks
            .stats()
            .puts
            .load(std::sync::atomic::Ordering::Relaxed),
        3,
        "two full blocks and a tail uploaded"
    );
    assert_eq!(cached(&default), 1, "only the tail is cached");
    assert_eq!(get(&default.fs, "/first.exr").await, Ok(first));
    assert_eq!(cached(&default), 3, "full blocks are cached once read");

    let mut spec = rig.spec("studio", live("/"), None, "large");
    spec.cache_large_writes = true;
    let large = rig.open(&spec).await.expect("open");
    put(&large.fs, "/second.exr", &file(2)).await;
    large.fs.flush_all().await.expect("flush_all");
    assert_eq!(cached(&large), 3, "every uploaded block is cached");
}

/// A mount's access switch: read-only refuses changes with EROFS and keeps reads, denied
/// refuses lookups and opens with EACCES, and restoring it restores both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_access_refuses_at_the_operation_and_can_be_restored() {
    use drive::rules::access::MountAccess;
    let rig = Rig::new();
    let spec = Rig::creating(rig.spec("studio.a", live("/"), None, "m"));
    let fs = rig.open(&spec).await.expect("open").fs;
    put(&fs, "shot/frame.exr", b"pixels").await;

    fs.set_mount_access(MountAccess::ReadOnly);
    assert_eq!(get(&fs, "shot/frame.exr").await, Ok(b"pixels".to_vec()));
    let err = fs.mkdir(ROOT_INO, b"new", 0o755, caller()).await.unwrap_err();
    assert_eq!(err.kind(), FsErrorKind::ReadOnly);
    let write = OpenFlags {
        write: true,
        ..OpenFlags::default()
    };
    let err = fs
        .create(ROOT_INO, b"new.exr", 0o644, write, caller())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), FsErrorKind::ReadOnly);

    fs.set_mount_access(MountAccess::Denied);
    assert_eq!(get(&fs, "shot/frame.exr").await, Err(FsErrorKind::AccessDenied));
    assert_eq!(
        fs.opendir(ROOT_INO).await.unwrap_err().kind(),
        FsErrorKind::AccessDenied
    );
    let err = fs.mkdir(ROOT_INO, b"new", 0o755, caller()).await.unwrap_err();
    assert_eq!(err.kind(), FsErrorKind::AccessDenied);

    fs.set_mount_access(MountAccess::ReadWrite);
    put(&fs, "shot/frame.exr", b"again").await;
    assert_eq!(get(&fs, "shot/frame.exr").await, Ok(b"again".to_vec()));
}

// Catches: the in-memory store dropping a workspace's object-store location (its mounts would
// put blocks in the node's store), or accepting one the PostgreSQL store refuses.
#[tokio::test]
async fn the_in_memory_store_keeps_the_object_store_location() {
    let meta = MemMetaStore::new();
    let location = drive::model::ObjectStoreLocation {
        bucket: "tenant-a".into(),
        prefix: "studio/shot010".into(),
        endpoint: Some("http://127.0.0.1:9000".into()),
        region: Some("eu-west-1".into()),
    };
    let mut spec = drive::model::WorkspaceSpec::new("tenant", drive::model::WorkspaceKind::Team);
    spec.object_store = Some(location.clone());
    let actor = Actor::system("test");
    let created = meta.create_workspace(&actor, &spec).await.unwrap();
    assert_eq!(created.object_store.as_ref(), Some(&location));
    assert_eq!(
        meta.get_workspace("tenant").await.unwrap().object_store,
        Some(location)
    );

    spec.name = "other".into();
    spec.object_store.as_mut().unwrap().bucket = "Not_A_Bucket".into();
    let err = meta.create_workspace(&actor, &spec).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(meta.get_workspace("other").await.is_err(), "nothing created");
}

// Catches: a plaintext workspace with an object store of its own deduplicating against a block
// of another store (block records are shared): its writer skips the upload, its bucket never
// gets the object, and the file cannot be read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_blocks_in_two_stores_are_both_stored() {
    let rig = Rig::new();
    let own_store: Arc<dyn ChunkStore> = Arc::new(MemoryChunkStore::new());
    let actor = Actor::system("test");
    let mut own = drive::model::WorkspaceSpec::new("tenant.own", drive::model::WorkspaceKind::Team);
    own.block_size = MIN_BLOCK_SIZE;
    own.object_store = Some(drive::model::ObjectStoreLocation {
        bucket: "tenant-a".into(),
        prefix: "own".into(),
        endpoint: None,
        region: None,
    });
    rig.meta.create_workspace(&actor, &own).await.expect("create");
    let data: Vec<u8> = (0..3 * MIN_BLOCK_SIZE as usize)
        .map(|i| (i % 251) as u8)
        .collect();

    let node = rig
        .open(&Rig::creating(rig.spec("tenant.node", live("/"), None, "a")))
        .await
        .expect("open the node-store workspace")
        .fs;
    put(&node, "frame.exr", &data).await;
    let open_own = |tag: &str| {
        let spec = rig.spec("tenant.own", live("/"), None, tag);
        let (meta, store) = (rig.meta.clone(), own_store.clone());
        async move {
            mount::open(meta, store, &spec)
                .await
                .expect("open the own-store workspace")
                .fs
        }
    };
    let own_fs = open_own("b").await;
    put(&own_fs, "frame.exr", &data).await;

    assert!(
        !own_store.list("blocks/").await.expect("list").is_empty(),
        "the workspace's own store holds its blocks"
    );
    // A fresh mount (empty caches) reads both from their stores.
    let fresh = open_own("c").await;
    assert_eq!(get(&fresh, "frame.exr").await, Ok(data.clone()));
    let again = rig
        .open(&rig.spec("tenant.node", live("/"), None, "d"))
        .await
        .expect("reopen")
        .fs;
    assert_eq!(get(&again, "frame.exr").await, Ok(data));
}

/// Opening a new file whose first commit failed (it never reached the store) answers ESTALE,
/// not ENOENT, so the kernel looks the name up again instead of failing an `open(O_CREAT)` of
/// the same name on its stale cached entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_a_file_whose_create_was_abandoned_is_stale() {
    use drive::data::{FaultyChunkStore, StoreFault, StoreOp};
    let rig = Rig::new();
    let faulty = Arc::new(FaultyChunkStore::new(rig.chunks.clone()));
    let spec = Rig::creating(rig.spec("studio.a", live("/"), None, "a"));
    let fs = mount::open(rig.meta.clone(), faulty.clone() as Arc<dyn ChunkStore>, &spec)
        .await
        .expect("open")
        .fs;
    let flags = OpenFlags {
        read: true,
        write: true,
        ..OpenFlags::default()
    };
    let created = fs
        .create(ROOT_INO, b"new.exr", 0o644, flags, caller())
        .await
        .expect("create");
    fs.write(created.fh, 0, b"first try").await.expect("write");
    faulty.set(StoreOp::Put, StoreFault::Refused);
    assert!(
        fs.flush(created.fh, caller()).await.is_err(),
        "the first commit fails"
    );
    let _ = fs.release(created.fh, caller()).await;
    faulty.clear();
    let err = fs
        .open(fs.to_ino(created.attr.ino), flags, caller())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), FsErrorKind::Stale, "{err}");
    // The name is free: creating it again works.
    put(&fs, "new.exr", b"second try").await;
    assert_eq!(get(&fs, "new.exr").await, Ok(b"second try".to_vec()));
}
