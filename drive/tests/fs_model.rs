//! Reference-model test of the file-system layer: random sequences of creates, writes,
//! truncates, mkdirs, renames, links, unlinks, rmdirs, snapshots and remounts run against
//! `DriveFs` and against a plain in-memory model of a POSIX tree. Each operation must succeed
//! in both or fail in both with the same error kind; after every step the live tree (paths,
//! kinds, sizes, link counts, which paths are one node) must match, and so must the store's
//! usage counters (bytes of files, each node once, and nodes), and after the last step
//! also every file's bytes and every snapshot's tree.
//!
//! The same cases run over the in-memory metadata store (`MemMetaStore`, many cases) and over
//! PostgreSQL (`PgMetaStore`, fewer), both with an in-memory object store and write-behind
//! removals running, so the two stores are held to one contract through the layer above them.
//!
//! Reproducible: a fixed seed (`FS_MODEL_SEED=<u64>` or `random` to explore, `FS_MODEL_CASES`
//! for more cases); failures are shrunk, printed, and their seeds appended to
//! `fs_model.proptest-regressions` (checked in), whose cases run first on every later run.
//! A bug found here is also pinned as a named regression test at the end of this file.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use drive::data::{
    BlockCodec, BlockStore, ChunkStore, FaultyChunkStore, MemoryChunkStore, StoreFault, StoreOp,
};
use drive::fs::{Caller, DriveFs, FsConfig, FsErrorKind, OpenFlags, ROOT_INO};
use drive::model::{
    MIN_BLOCK_SIZE, NodeKind, RenameMode, SetAttr, View, Workspace, WorkspaceKind, WorkspaceSpec,
};
use drive::{MemMetaStore, MetaStore};
use proptest::prelude::*;
use proptest::test_runner::{
    Config, FileFailurePersistence, RngAlgorithm, RngSeed, TestCaseError, TestError, TestRunner,
};

const NAMES: [&str; 4] = ["a", "b", "c", "shot.0001.exr"];
/// Offsets and lengths of writes around the 64 KiB block size of the test workspace.
const OFFSETS: [u64; 4] = [0, 1000, 65_530, 131_072];
const LENS: [usize; 4] = [1, 700, 65_536, 70_001];
const SIZES: [u64; 4] = [0, 10, 65_536, 100_000];
const MAX_SNAPSHOTS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Create {
        dir: usize,
        name: usize,
        len: usize,
        seed: u8,
    },
    Mkdir {
        dir: usize,
        name: usize,
    },
    Write {
        file: usize,
        offset: usize,
        len: usize,
        seed: u8,
    },
    Truncate {
        file: usize,
        size: usize,
    },
    Rename {
        dir: usize,
        name: usize,
        to_dir: usize,
        to_name: usize,
        no_replace: bool,
    },
    Link {
        node: usize,
        dir: usize,
        name: usize,
    },
    Unlink {
        dir: usize,
        name: usize,
    },
    Rmdir {
        dir: usize,
        name: usize,
    },
    Snapshot,
    Remount,
    /// A create or write while the object store refuses uploads (full, or down): it fails
    /// with ENOSPC or EIO and changes nothing, or (nothing to upload) succeeds whole.
    StoreFailing {
        full: bool,
        op: Box<Op>,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let i = || 0usize..16;
    let n = || 0..NAMES.len();
    prop_oneof![
        4 => (i(), n(), 0..=LENS.len(), any::<u8>()).prop_map(|(dir, name, len, seed)| Op::Create { dir, name, len, seed }),
        2 => (i(), n()).prop_map(|(dir, name)| Op::Mkdir { dir, name }),
        3 => (i(), 0..OFFSETS.len(), 0..LENS.len(), any::<u8>())
            .prop_map(|(file, offset, len, seed)| Op::Write { file, offset, len, seed }),
        1 => (i(), 0..SIZES.len()).prop_map(|(file, size)| Op::Truncate { file, size }),
        3 => (i(), n(), i(), n(), proptest::bool::weighted(0.2))
            .prop_map(|(dir, name, to_dir, to_name, no_replace)| Op::Rename { dir, name, to_dir, to_name, no_replace }),
        1 => (i(), i(), n()).prop_map(|(node, dir, name)| Op::Link { node, dir, name }),
        2 => (i(), n()).prop_map(|(dir, name)| Op::Unlink { dir, name }),
        1 => (i(), n()).prop_map(|(dir, name)| Op::Rmdir { dir, name }),
        1 => Just(Op::Snapshot),
        1 => Just(Op::Remount),
        1 => (
            any::<bool>(),
            prop_oneof![
                (i(), n(), 0..LENS.len(), any::<u8>()).prop_map(|(dir, name, len, seed)| Op::Create { dir, name, len, seed }),
                (i(), 0..OFFSETS.len(), 0..LENS.len(), any::<u8>())
                    .prop_map(|(file, offset, len, seed)| Op::Write { file, offset, len, seed }),
            ]
        )
            .prop_map(|(full, op)| Op::StoreFailing { full, op: Box::new(op) }),
    ]
}

/// Bytes of a write: `len` bytes that depend on `seed`.
fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

// ---- the model ----

#[derive(Debug, Clone, PartialEq, Eq)]
enum MNode {
    File(Vec<u8>),
    Dir,
}

/// A POSIX tree: nodes by id, entries (dir, name) -> node. Node 0 is the root.
#[derive(Debug, Clone)]
struct Model {
    nodes: BTreeMap<u64, MNode>,
    entries: BTreeMap<(u64, String), u64>,
    next: u64,
}

type Outcome = Result<(), FsErrorKind>;

impl Model {
    fn new() -> Model {
        Model {
            nodes: BTreeMap::from([(0, MNode::Dir)]),
            entries: BTreeMap::new(),
            next: 1,
        }
    }

    fn paths_from(&self, dir: u64, prefix: &str, out: &mut Vec<(String, u64)>) {
        for ((_, name), node) in self
            .entries
            .range((dir, String::new())..)
            .take_while(|((d, _), _)| *d == dir)
        {
            let path = format!("{prefix}/{name}");
            out.push((path.clone(), *node));
            if self.nodes[node] == MNode::Dir {
                self.paths_from(*node, &path, out);
            }
        }
    }

    /// Every path with its node, the root ("") first.
    fn paths(&self) -> Vec<(String, u64)> {
        let mut out = vec![(String::new(), 0)];
        self.paths_from(0, "", &mut out);
        out
    }

    fn pick(&self, ix: usize, want: impl Fn(&MNode) -> bool) -> Option<(String, u64)> {
        let all: Vec<(String, u64)> = self
            .paths()
            .into_iter()
            .filter(|(_, n)| want(&self.nodes[n]))
            .collect();
        (!all.is_empty()).then(|| all[ix % all.len()].clone())
    }

    fn dir(&self, ix: usize) -> (String, u64) {
        self.pick(ix, |n| *n == MNode::Dir)
            .expect("the root is a directory")
    }

    fn has_children(&self, dir: u64) -> bool {
        self.entries.keys().any(|(d, _)| *d == dir)
    }

    fn is_within(&self, node: u64, ancestor: u64) -> bool {
        let parent_of = |n: u64| self.entries.iter().find(|(_, v)| **v == n).map(|((d, _), _)| *d);
        let mut at = Some(node);
        while let Some(n) = at {
            if n == ancestor {
                return true;
            }
            at = if n == 0 { None } else { parent_of(n) };
        }
        false
    }

    fn nlink(&self, node: u64) -> u32 {
        match self.nodes[&node] {
            MNode::Dir => {
                2 + self
                    .entries
                    .iter()
                    .filter(|((d, _), n)| *d == node && self.nodes[*n] == MNode::Dir)
                    .count() as u32
            }
            MNode::File(_) => self.entries.values().filter(|n| **n == node).count() as u32,
        }
    }

    /// What the usage counters should say: bytes of the files (each node once, however
    /// many names it has) and the number of nodes below the root.
    fn usage(&self) -> (u64, u64) {
        let nodes: BTreeSet<u64> = self.paths().into_iter().skip(1).map(|(_, n)| n).collect();
        let bytes = nodes
            .iter()
            .map(|n| match &self.nodes[n] {
                MNode::File(data) => data.len() as u64,
                MNode::Dir => 0,
            })
            .sum();
        (bytes, nodes.len() as u64)
    }

    fn add(&mut self, dir: u64, name: &str, node: MNode) -> Outcome {
        if self.entries.contains_key(&(dir, name.to_owned())) {
            return Err(FsErrorKind::Exists);
        }
        let id = self.next;
        self.next += 1;
        self.nodes.insert(id, node);
        self.entries.insert((dir, name.to_owned()), id);
        Ok(())
    }

    fn remove(&mut self, dir: u64, name: &str, rmdir: bool) -> Outcome {
        let key = (dir, name.to_owned());
        let node = *self.entries.get(&key).ok_or(FsErrorKind::NotFound)?;
        match (rmdir, &self.nodes[&node]) {
            (false, MNode::Dir) => return Err(FsErrorKind::IsADirectory),
            (true, MNode::File(_)) => return Err(FsErrorKind::NotADirectory),
            (true, MNode::Dir) if self.has_children(node) => return Err(FsErrorKind::NotEmpty),
            _ => {}
        }
        self.entries.remove(&key);
        Ok(())
    }

    fn rename(&mut self, from: (u64, &str), to: (u64, &str), no_replace: bool) -> Outcome {
        let src_key = (from.0, from.1.to_owned());
        let dst_key = (to.0, to.1.to_owned());
        let src = *self.entries.get(&src_key).ok_or(FsErrorKind::NotFound)?;
        if src_key == dst_key {
            return Ok(());
        }
        let src_dir = self.nodes[&src] == MNode::Dir;
        if src_dir && self.is_within(to.0, src) {
            return Err(FsErrorKind::InvalidArgument);
        }
        if let Some(&dst) = self.entries.get(&dst_key) {
            if no_replace {
                return Err(FsErrorKind::Exists);
            }
            if dst == src {
                return Ok(());
            }
            let dst_dir = self.nodes[&dst] == MNode::Dir;
            match (src_dir, dst_dir) {
                (true, false) => return Err(FsErrorKind::NotADirectory),
                (false, true) => return Err(FsErrorKind::IsADirectory),
                (true, true) if self.has_children(dst) => return Err(FsErrorKind::NotEmpty),
                _ => {}
            }
        }
        self.entries.remove(&src_key);
        self.entries.insert(dst_key, src);
        Ok(())
    }
}

/// What a tree looks like from outside: per path, its kind, size and link count; which paths
/// are one node; and (when asked) file bytes.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    paths: BTreeMap<String, (bool, u64, u32)>,
    same_node: BTreeSet<Vec<String>>,
    contents: BTreeMap<String, Vec<u8>>,
}

fn seen_model(m: &Model, contents: bool) -> Seen {
    let mut paths = BTreeMap::new();
    let mut groups: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut bytes = BTreeMap::new();
    for (path, node) in m.paths().into_iter().skip(1) {
        let (is_dir, size) = match &m.nodes[&node] {
            MNode::Dir => (true, 0),
            MNode::File(data) => {
                if contents {
                    bytes.insert(path.clone(), data.clone());
                }
                (false, data.len() as u64)
            }
        };
        paths.insert(path.clone(), (is_dir, size, m.nlink(node)));
        groups.entry(node).or_default().push(path);
    }
    Seen {
        paths,
        same_node: groups.into_values().collect(),
        contents: bytes,
    }
}

// ---- the engine ----

type Fs<M> = DriveFs<BlockStore<M>, M>;

fn caller() -> Caller {
    Caller::default()
}

fn rw() -> OpenFlags {
    OpenFlags {
        read: true,
        write: true,
        ..OpenFlags::default()
    }
}

/// One workspace and the mount over it, with write-behind removals running as in a real
/// mount.
struct Rig<M: MetaStore> {
    meta: M,
    ws: Workspace,
    chunks: Arc<FaultyChunkStore>,
    tmp: tempfile::TempDir,
    fs: Arc<Fs<M>>,
    removals: Option<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
    snapshots: Vec<(drive::model::Snapshot, Model)>,
}

static CASE: AtomicU64 = AtomicU64::new(0);

fn mount<M: MetaStore>(
    meta: &M,
    ws: &Workspace,
    chunks: &Arc<FaultyChunkStore>,
    tmp: &tempfile::TempDir,
    view: View,
    root: drive::model::NodeId,
) -> Fs<M> {
    let store: Arc<dyn ChunkStore> = chunks.clone();
    let blocks = BlockStore::new(meta.clone(), store, BlockCodec::plaintext(), None);
    let staging = tmp
        .path()
        .join(format!("staging-{}", CASE.fetch_add(1, Ordering::Relaxed)));
    DriveFs::new(
        meta.clone(),
        Arc::new(blocks),
        ws.clone(),
        FsConfig::new(view, root, staging),
    )
    .expect("mount")
}

impl<M: MetaStore> Rig<M> {
    /// A fresh workspace of `meta` whose blocks go to `chunks` (one object store per metadata
    /// store: block records are shared by its workspaces, so dedup finds blocks stored there).
    async fn new(meta: M, chunks: Arc<MemoryChunkStore>) -> Rig<M> {
        let chunks = Arc::new(FaultyChunkStore::new(chunks));
        let name = format!("model-{}", CASE.fetch_add(1, Ordering::Relaxed));
        let mut spec = WorkspaceSpec::new(name, WorkspaceKind::User);
        spec.block_size = MIN_BLOCK_SIZE;
        let ws = meta
            .create_workspace(&common::actor(), &spec)
            .await
            .expect("workspace");
        let tmp = tempfile::tempdir().expect("temp dir");
        let fs = Arc::new(mount(&meta, &ws, &chunks, &tmp, View::Live, ws.root));
        let mut rig = Rig {
            meta,
            ws,
            chunks,
            tmp,
            fs,
            removals: None,
            snapshots: Vec::new(),
        };
        rig.start_removals();
        rig
    }

    fn start_removals(&mut self) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let fs = self.fs.clone();
        let task = tokio::spawn(async move {
            fs.run_removals(async move {
                let _ = stopped.await;
            })
            .await;
        });
        self.removals = Some((stop, task));
    }

    /// Unmounts as the mount command does (removals drained, sessions committed) and mounts
    /// again: what the new mount sees is what the stores kept.
    async fn remount(&mut self) -> Result<(), String> {
        if let Some((stop, task)) = self.removals.take() {
            let _ = stop.send(());
            task.await.map_err(|e| e.to_string())?;
        }
        self.fs.flush_all().await.map_err(|e| format!("flush_all: {e}"))?;
        self.fs = Arc::new(mount(
            &self.meta,
            &self.ws,
            &self.chunks,
            &self.tmp,
            View::Live,
            self.ws.root,
        ));
        self.start_removals();
        Ok(())
    }

    async fn resolve(fs: &Fs<M>, path: &str) -> Result<u64, FsErrorKind> {
        let mut ino = ROOT_INO;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            ino = fs.to_ino(fs.lookup(ino, part.as_bytes()).await.map_err(|e| e.kind())?.ino);
        }
        Ok(ino)
    }

    async fn write(&self, ino: u64, offset: u64, data: &[u8]) -> Outcome {
        let fs = &self.fs;
        let opened = fs.open(ino, rw(), caller()).await.map_err(|e| e.kind())?;
        let written = fs.write(opened.fh, offset, data).await.map(drop);
        let flushed = fs.flush(opened.fh, caller()).await;
        let released = fs.release(opened.fh, caller()).await;
        written.and(flushed).and(released).map_err(|e| e.kind())
    }

    async fn create(&self, dir: u64, name: &str, data: &[u8]) -> Outcome {
        let fs = &self.fs;
        let opened = fs
            .create(dir, name.as_bytes(), 0o644, rw(), caller())
            .await
            .map_err(|e| e.kind())?;
        let written = if data.is_empty() {
            Ok(())
        } else {
            fs.write(opened.fh, 0, data).await.map(drop)
        };
        let flushed = fs.flush(opened.fh, caller()).await;
        let released = fs.release(opened.fh, caller()).await;
        written.and(flushed).and(released).map_err(|e| e.kind())
    }

    /// Applies `op` to the model and the engine; their outcomes must agree.
    async fn apply(&mut self, model: &mut Model, op: &Op) -> Result<(), String> {
        let (expected, got) = match op {
            Op::StoreFailing { full, op } => {
                let (fault, errno) = match full {
                    true => (StoreFault::NoSpace, FsErrorKind::NoSpace),
                    false => (StoreFault::Unavailable, FsErrorKind::Io),
                };
                let mut tried = model.clone();
                self.chunks.set(StoreOp::Put, fault);
                let outcomes = Box::pin(self.outcomes(&mut tried, op)).await;
                self.chunks.clear();
                let (expected, got) = outcomes?;
                if expected.is_ok() && got == Err(errno) {
                    return Ok(()); // refused whole: the model stays as it was
                }
                *model = tried;
                (expected, got)
            }
            op => self.outcomes(model, op).await?,
        };
        if expected != got {
            return Err(format!("{op:?}: model says {expected:?}, engine says {got:?}"));
        }
        Ok(())
    }

    /// Applies `op` to the model and the engine and returns both outcomes.
    async fn outcomes(&mut self, model: &mut Model, op: &Op) -> Result<(Outcome, Outcome), String> {
        let fs = self.fs.clone();
        Ok(match *op {
            Op::Create { dir, name, len, seed } => {
                let (path, d) = model.dir(dir);
                let data = LENS.get(len).map_or(Vec::new(), |l| bytes(*l, seed));
                let expected = model.add(d, NAMES[name], MNode::File(data.clone()));
                let parent = Self::resolve(&fs, &path)
                    .await
                    .map_err(|e| format!("{path}: {e:?}"))?;
                (expected, self.create(parent, NAMES[name], &data).await)
            }
            Op::Mkdir { dir, name } => {
                let (path, d) = model.dir(dir);
                let expected = model.add(d, NAMES[name], MNode::Dir);
                let parent = Self::resolve(&fs, &path)
                    .await
                    .map_err(|e| format!("{path}: {e:?}"))?;
                (
                    expected,
                    fs.mkdir(parent, NAMES[name].as_bytes(), 0o755, caller())
                        .await
                        .map(drop)
                        .map_err(|e| e.kind()),
                )
            }
            Op::Write {
                file,
                offset,
                len,
                seed,
            } => {
                let Some((path, node)) = model.pick(file, |n| matches!(n, MNode::File(_))) else {
                    return Ok((Ok(()), Ok(())));
                };
                let (offset, data) = (OFFSETS[offset], bytes(LENS[len], seed));
                if let Some(MNode::File(content)) = model.nodes.get_mut(&node) {
                    let end = offset as usize + data.len();
                    if content.len() < end {
                        content.resize(end, 0);
                    }
                    content[offset as usize..end].copy_from_slice(&data);
                }
                let ino = Self::resolve(&fs, &path)
                    .await
                    .map_err(|e| format!("{path}: {e:?}"))?;
                (Ok(()), self.write(ino, offset, &data).await)
            }
            Op::Truncate { file, size } => {
                let Some((path, node)) = model.pick(file, |n| matches!(n, MNode::File(_))) else {
                    return Ok((Ok(()), Ok(())));
                };
                if let Some(MNode::File(content)) = model.nodes.get_mut(&node) {
                    content.resize(SIZES[size] as usize, 0);
                }
                let ino = Self::resolve(&fs, &path)
                    .await
                    .map_err(|e| format!("{path}: {e:?}"))?;
                let change = SetAttr {
                    size: Some(SIZES[size]),
                    ..SetAttr::default()
                };
                (
                    Ok(()),
                    fs.setattr(ino, change, caller())
                        .await
                        .map(drop)
                        .map_err(|e| e.kind()),
                )
            }
            Op::Rename {
                dir,
                name,
                to_dir,
                to_name,
                no_replace,
            } => {
                let ((from, f), (to, t)) = (model.dir(dir), model.dir(to_dir));
                let expected = model.rename((f, NAMES[name]), (t, NAMES[to_name]), no_replace);
                let from = Self::resolve(&fs, &from)
                    .await
                    .map_err(|e| format!("{from}: {e:?}"))?;
                let to = Self::resolve(&fs, &to)
                    .await
                    .map_err(|e| format!("{to}: {e:?}"))?;
                let mode = if no_replace {
                    RenameMode::NoReplace
                } else {
                    RenameMode::Replace
                };
                let got = fs
                    .rename(
                        from,
                        NAMES[name].as_bytes(),
                        to,
                        NAMES[to_name].as_bytes(),
                        mode,
                        caller(),
                    )
                    .await;
                (expected, got.map_err(|e| e.kind()))
            }
            Op::Link { node, dir, name } => {
                let Some((path, n)) = model.pick(node, |_| true).filter(|(p, _)| !p.is_empty()) else {
                    return Ok((Ok(()), Ok(())));
                };
                let (dpath, d) = model.dir(dir);
                let expected = match model.entries.entry((d, NAMES[name].to_owned())) {
                    _ if model.nodes[&n] == MNode::Dir => Err(FsErrorKind::NotPermitted),
                    std::collections::btree_map::Entry::Occupied(_) => Err(FsErrorKind::Exists),
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert(n);
                        Ok(())
                    }
                };
                let ino = Self::resolve(&fs, &path)
                    .await
                    .map_err(|e| format!("{path}: {e:?}"))?;
                let parent = Self::resolve(&fs, &dpath)
                    .await
                    .map_err(|e| format!("{dpath}: {e:?}"))?;
                (
                    expected,
                    fs.link(ino, parent, NAMES[name].as_bytes(), caller())
                        .await
                        .map(drop)
                        .map_err(|e| e.kind()),
                )
            }
            Op::Unlink { dir, name } | Op::Rmdir { dir, name } => {
                let rmdir = matches!(op, Op::Rmdir { .. });
                let (path, d) = model.dir(dir);
                let expected = model.remove(d, NAMES[name], rmdir);
                let parent = Self::resolve(&fs, &path)
                    .await
                    .map_err(|e| format!("{path}: {e:?}"))?;
                let got = if rmdir {
                    fs.rmdir(parent, NAMES[name].as_bytes(), caller()).await
                } else {
                    fs.unlink(parent, NAMES[name].as_bytes(), caller()).await
                };
                (expected, got.map_err(|e| e.kind()))
            }
            Op::Snapshot => {
                if self.snapshots.len() >= MAX_SNAPSHOTS {
                    return Ok((Ok(()), Ok(())));
                }
                // A snapshot sees what was committed: settle this mount's queued removals first,
                // as `studiodrive-csi snapshot` does through fsyncdir of the mount.
                fs.fsyncdir().await.map_err(|e| format!("fsyncdir: {e}"))?;
                let name = format!("s{}", self.snapshots.len());
                let snap = self
                    .meta
                    .create_snapshot(&common::actor(), self.ws.id, &name, "/")
                    .await
                    .map_err(|e| format!("snapshot: {e}"))?;
                self.snapshots.push((snap, model.clone()));
                (Ok(()), Ok(()))
            }
            Op::Remount => {
                self.remount().await?;
                (Ok(()), Ok(()))
            }
            Op::StoreFailing { .. } => return Err("a failing store does not nest".into()),
        })
    }

    /// The tree `fs` shows, read through its own API.
    async fn seen(fs: &Fs<M>, contents: bool) -> Result<Seen, String> {
        let mut paths = BTreeMap::new();
        let mut groups: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        let mut bytes = BTreeMap::new();
        let mut pending = vec![(String::new(), ROOT_INO)];
        while let Some((prefix, dir)) = pending.pop() {
            let fh = fs
                .opendir(dir)
                .await
                .map_err(|e| format!("opendir {prefix}: {e}"))?;
            let mut offset = 0;
            loop {
                let items = fs
                    .readdir(fh, offset)
                    .await
                    .map_err(|e| format!("readdir {prefix}: {e}"))?;
                let Some(last) = items.last() else { break };
                offset = last.offset;
                for item in items.into_iter().filter(|i| i.name != b"." && i.name != b"..") {
                    let path = format!("{prefix}/{}", String::from_utf8_lossy(&item.name));
                    let attr = fs
                        .getattr(item.attr.ino.0)
                        .await
                        .map_err(|e| format!("getattr {path}: {e}"))?;
                    let is_dir = attr.kind == NodeKind::Directory;
                    let size = if is_dir { 0 } else { attr.size };
                    paths.insert(path.clone(), (is_dir, size, attr.nlink));
                    groups.entry(attr.ino.0).or_default().push(path.clone());
                    if is_dir {
                        pending.push((path, attr.ino.0));
                    } else if contents {
                        bytes.insert(
                            path.clone(),
                            Self::read_all(fs, attr.ino.0, attr.size)
                                .await
                                .map_err(|e| format!("read {path}: {e}"))?,
                        );
                    }
                }
            }
            fs.releasedir(fh);
        }
        for group in groups.values_mut() {
            group.sort();
        }
        Ok(Seen {
            paths,
            same_node: groups.into_values().collect(),
            contents: bytes,
        })
    }

    async fn read_all(fs: &Fs<M>, ino: u64, size: u64) -> Result<Vec<u8>, drive::fs::FsError> {
        let opened = fs
            .open(
                ino,
                OpenFlags {
                    read: true,
                    ..OpenFlags::default()
                },
                caller(),
            )
            .await?;
        let mut out = Vec::new();
        loop {
            let chunk = fs.read(opened.fh, out.len() as u64, 128 << 10).await?;
            if chunk.is_empty() {
                break;
            }
            out.extend_from_slice(&chunk);
        }
        fs.release(opened.fh, caller()).await?;
        if out.len() as u64 != size {
            out.push(0xEE); // a length that disagrees with getattr shows as a difference
        }
        Ok(out)
    }

    async fn check(&self, model: &Model, contents: bool) -> Result<(), String> {
        let got = Self::seen(&self.fs, contents).await?;
        let want = seen_model(model, contents);
        if got != want {
            return Err(format!(
                "live tree differs:\n  model:  {}\n  engine: {}",
                brief(&want),
                brief(&got)
            ));
        }
        // The store's usage counters against the model's tree, once this mount's queued
        // removals have landed.
        self.fs.fsyncdir().await.map_err(|e| format!("fsyncdir: {e}"))?;
        let usage = self
            .meta
            .workspace_usage(self.ws.id)
            .await
            .map_err(|e| format!("workspace_usage: {e}"))?;
        let want = model.usage();
        if (usage.bytes, usage.nodes) != want {
            return Err(format!(
                "usage counters (bytes, nodes): store {:?}, model {want:?}",
                (usage.bytes, usage.nodes)
            ));
        }
        if contents {
            for (snap, snap_model) in &self.snapshots {
                let view = mount(
                    &self.meta,
                    &self.ws,
                    &self.chunks,
                    &self.tmp,
                    View::At(snap.epoch),
                    snap.root,
                );
                let got = Self::seen(&view, true).await?;
                let want = seen_model(snap_model, true);
                if got != want {
                    return Err(format!(
                        "snapshot {} differs:\n  model:  {}\n  engine: {}",
                        snap.name,
                        brief(&want),
                        brief(&got)
                    ));
                }
            }
        }
        Ok(())
    }
}

fn brief(seen: &Seen) -> String {
    let contents: BTreeMap<&String, (usize, u32)> = seen
        .contents
        .iter()
        .map(|(p, b)| (p, (b.len(), crc(b))))
        .collect();
    format!(
        "{:?} links {:?} bytes(len, sum) {:?}",
        seen.paths, seen.same_node, contents
    )
}

fn crc(b: &[u8]) -> u32 {
    b.iter()
        .fold(0u32, |a, x| a.wrapping_mul(31).wrapping_add(u32::from(*x)))
}

/// Runs one case against a fresh workspace of `meta`.
async fn run_case<M: MetaStore>(meta: M, chunks: Arc<MemoryChunkStore>, ops: &[Op]) -> Result<(), String> {
    let mut rig = Rig::new(meta, chunks).await;
    let mut model = Model::new();
    for (i, op) in ops.iter().enumerate() {
        rig.apply(&mut model, op)
            .await
            .map_err(|e| format!("step {i}: {e}"))?;
        let last = i + 1 == ops.len();
        rig.check(&model, last || matches!(op, Op::Remount))
            .await
            .map_err(|e| format!("after step {i} {op:?}: {e}"))?;
    }
    rig.remount().await?;
    rig.check(&model, true)
        .await
        .map_err(|e| format!("after the final remount: {e}"))
}

fn seed() -> u64 {
    match std::env::var("FS_MODEL_SEED").as_deref() {
        Ok("random") => rand::random(),
        Ok(s) => s.parse().expect("FS_MODEL_SEED is a u64 or `random`"),
        Err(_) => 0x0f5_5eed,
    }
}

/// Runs `cases` generated cases through `run` with failure persistence and shrinking.
fn run_model(test: &str, cases: u32, run: impl Fn(Vec<Op>) -> Result<(), String>) {
    let seed = seed();
    let cases = std::env::var("FS_MODEL_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(cases);
    eprintln!("{test}: seed {seed} (FS_MODEL_SEED), {cases} cases");
    let config = Config {
        cases,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fs_model.proptest-regressions"
        )))),
        source_file: Some(file!()),
        max_shrink_iters: 2000,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&proptest::collection::vec(op_strategy(), 1..40), |ops| {
        run(ops).map_err(TestCaseError::fail)
    });
    match result {
        Ok(()) => {}
        Err(TestError::Abort(why)) => panic!("{test} (seed {seed}): aborted: {why}"),
        Err(TestError::Fail(why, ops)) => {
            panic!("{test} (seed {seed}): {why}\nshrunk case, to pin as a regression test: vec!{ops:?}")
        }
    }
}

#[test]
fn fs_over_memory_store_matches_reference_model() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    run_model("memory store", 512, |ops| {
        rt.block_on(run_case(
            MemMetaStore::new(),
            Arc::new(MemoryChunkStore::new()),
            &ops,
        ))
    });
}

#[test]
fn fs_over_postgres_matches_reference_model() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let meta = rt.block_on(common::store());
    let chunks = Arc::new(MemoryChunkStore::new());
    run_model("postgres store", 128, |ops| {
        rt.block_on(run_case(meta.clone(), chunks.clone(), &ops))
    });
}

/// Every time the layers stamp comes from the injected clock: the store's for what it
/// creates and changes, the mount's for written content (a stray wall-clock read fails this).
#[tokio::test]
async fn times_come_from_the_injected_clocks() {
    use drive::model::Timestamp;
    use drive::ports::ManualClock;
    let store_clock = ManualClock::at(Timestamp(1_000_000_000));
    let mount_clock = ManualClock::at(Timestamp(2_000_000_000));
    let meta = MemMetaStore::new().with_clock(Arc::new(store_clock.clone()));
    let rig = Rig::new(meta, Arc::new(MemoryChunkStore::new())).await;
    let mut cfg = FsConfig::new(View::Live, rig.ws.root, rig.tmp.path().join("clocked"));
    cfg.clock = Arc::new(mount_clock.clone());
    let blocks = BlockStore::new(
        rig.meta.clone(),
        rig.chunks.clone(),
        BlockCodec::plaintext(),
        None,
    );
    let fs = DriveFs::new(rig.meta.clone(), Arc::new(blocks), rig.ws.clone(), cfg).unwrap();

    let dir = fs.mkdir(ROOT_INO, b"d", 0o755, caller()).await.unwrap();
    let t = Timestamp(1_000_000_000);
    assert_eq!(
        (dir.crtime, dir.mtime, dir.ctime),
        (t, t, t),
        "a new folder's times are the store's"
    );
    let opened = fs.create(ROOT_INO, b"f", 0o644, rw(), caller()).await.unwrap();
    fs.write(opened.fh, 0, b"frame").await.unwrap();
    store_clock.set(Timestamp(3_000_000_000));
    fs.flush(opened.fh, caller()).await.unwrap();
    fs.release(opened.fh, caller()).await.unwrap();
    let file = fs.getattr(fs.to_ino(opened.attr.ino)).await.unwrap();
    assert_eq!(
        file.mtime,
        Timestamp(2_000_000_000),
        "content time is the mount's clock"
    );
    assert_eq!(file.size, 5);
    let change = SetAttr {
        mode: Some(0o600),
        ..SetAttr::default()
    };
    let changed = fs.setattr(fs.to_ino(file.ino), change, caller()).await.unwrap();
    assert_eq!(
        changed.ctime,
        Timestamp(3_000_000_000),
        "a change's ctime is the store's clock"
    );
}
