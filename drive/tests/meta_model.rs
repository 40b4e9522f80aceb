//! Reference-model test: random operation sequences against the metadata store (real
//! PostgreSQL) and an in-memory model. Each operation must succeed in both or fail in both
//! with the same error kind, and after every step the live tree and every snapshot view (of
//! the workspace or of a folder) must equal the model's: for every path, its kind, its node
//! (hard links are one node, a copy is a new one, a snapshot shows the node the live tree
//! had), mode, owner, size, content version and link count. After the last step, also the
//! list of snapshots (name, path, root, epoch) and the usage totals of every view. The
//! workspace's usage counters (kept by the mutations) must match the model after every
//! step. A quarter of the cases run in a write-once project workspace.
//!
//! Reproducible: cases come from proptest's ChaCha generator with a fixed seed, printed when
//! the test starts and on failure. `META_MODEL_SEED=<u64>` (or `random`) explores other cases
//! and `META_MODEL_CASES=<n>` runs more of them. A failing case is shrunk and printed as a
//! regression test that replays its op list ([`replay`]), and its generator seed is appended
//! to `meta_model.proptest-regressions` next to this file (checked in), whose cases run
//! first on every later run. A saved seed regenerates its case only while the strategies
//! stay the same (a changed strategy turns it into one more random case), so a real bug is
//! also pinned as a named test with the op list.
//!
//! The engine bugs this test found are pinned as named regression tests at the end of this
//! file, each with the case that found it. `MODEL_TRACE=1` prints each operation with the
//! store's and the model's outcome.

mod common;

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use common::*;
use drive::ErrorKind;
use drive::PgMetaStore;
use drive::meta::QueuedUnlink;
use drive::model::*;
use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, RngAlgorithm, RngSeed, TestError, TestRunner};

const NAMES: [&str; 4] = ["a", "b", "c", "shot.0001.exr"];
/// Snapshot names: few, so that creating one over a live name and reusing a deleted name
/// both happen, and so that at most this many snapshot views are checked per step.
const SNAP_NAMES: [&str; 3] = ["s0", "s1", "s2"];
/// Modes given to create and setattr; the store keeps the low 12 bits (type bits dropped).
const MODES: [u32; 5] = [0o644, 0o755, 0o600, 0o4750, 0o100_640];
const IDS: [u32; 3] = [0, 1000, 65_534];
/// Sizes set by truncate (metadata only: the model writes no content).
const SIZES: [u64; 5] = [0, 1, 4096, 65_537, 3 << 20];
const SYMLINK_TARGETS: [&str; 2] = ["target", "../a/shot.0001.exr"];

/// The generator's seed when `META_MODEL_SEED` is unset.
const DEFAULT_SEED: u64 = 0x0014_5eed;
const SEED_VAR: &str = "META_MODEL_SEED";
const CASES_VAR: &str = "META_MODEL_CASES";
const REGRESSIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/meta_model.proptest-regressions"
);
/// One step. Indices pick from what exists at that point (modulo its count), so every
/// sequence is valid and shrinking keeps it meaningful. The `Debug` form is valid Rust
/// under `use Op::*`, so a printed case pastes into a regression test.
#[derive(Debug, Clone)]
enum Op {
    Create {
        dir: usize,
        name: usize,
        kind: u8,
        mode: usize,
        owner: usize,
    },
    /// Hard link to any node (directories are refused); `gone` picks one that no longer has
    /// a name in the live tree (an open handle's node: linkable while its count is not 0).
    Link {
        node: usize,
        gone: bool,
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
    /// A mount's batch of queued removals: each item (dir, name, stale) names the node the
    /// remover expects, the one there now or (`stale`) another one.
    UnlinkMany {
        items: Vec<(usize, usize, bool)>,
    },
    Rename {
        sdir: usize,
        sname: usize,
        ddir: usize,
        dname: usize,
        mode: u8,
    },
    Copy {
        src: usize,
        ddir: usize,
        dname: usize,
        merge: u8,
    },
    /// Subtree delete of any path (the root is refused).
    DeletePath {
        node: usize,
    },
    /// chmod / chown / truncate, alone or together; `gone` as for `Link`.
    SetAttr {
        node: usize,
        gone: bool,
        mode: Option<usize>,
        uid: Option<usize>,
        gid: Option<usize>,
        size: Option<usize>,
    },
    /// Snapshot of the workspace (`dir: None`) or of the node at a path (files are refused).
    /// `spelling` varies how the path is written ("/a/b", "a/b/", "//a//b/").
    Snapshot {
        name: usize,
        dir: Option<usize>,
        spelling: u8,
    },
    DeleteSnapshot {
        name: usize,
    },
    /// Path resolution (lookup by lookup) in the live tree (`snap: None`) or a snapshot view
    /// (the live tree when that snapshot does not exist); `missing` looks one name further,
    /// for a name the folder lacks (or below a non-folder).
    Lookup {
        snap: Option<usize>,
        path: usize,
        missing: bool,
    },
    /// Copy from a snapshot view into the live tree.
    Restore {
        snap: usize,
        src: usize,
        ddir: usize,
        dname: usize,
        merge: u8,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let i = || 0usize..64;
    let n = || 0usize..NAMES.len();
    let gone = || proptest::bool::weighted(0.15);
    let some = |len: usize| proptest::option::weighted(0.4, 0..len);
    prop_oneof![
        5 => (i(), n(), 0u8..6, 0..MODES.len(), 0..IDS.len())
            .prop_map(|(dir, name, kind, mode, owner)| Op::Create { dir, name, kind, mode, owner }),
        1 => (i(), gone(), i(), n()).prop_map(|(node, gone, dir, name)| Op::Link { node, gone, dir, name }),
        2 => (i(), n()).prop_map(|(dir, name)| Op::Unlink { dir, name }),
        1 => (i(), n()).prop_map(|(dir, name)| Op::Rmdir { dir, name }),
        1 => proptest::collection::vec((i(), n(), proptest::bool::weighted(0.2)), 1..4)
            .prop_map(|items| Op::UnlinkMany { items }),
        3 => (i(), n(), i(), n(), 0u8..3)
            .prop_map(|(sdir, sname, ddir, dname, mode)| Op::Rename { sdir, sname, ddir, dname, mode }),
        1 => (i(), i(), n(), 0u8..3).prop_map(|(src, ddir, dname, merge)| Op::Copy { src, ddir, dname, merge }),
        1 => i().prop_map(|node| Op::DeletePath { node }),
        3 => (i(), gone(), some(MODES.len()), some(IDS.len()), some(IDS.len()), some(SIZES.len()))
            .prop_map(|(node, gone, mode, uid, gid, size)| Op::SetAttr { node, gone, mode, uid, gid, size }),
        2 => (0..SNAP_NAMES.len(), proptest::option::of(i()), 0u8..3)
            .prop_map(|(name, dir, spelling)| Op::Snapshot { name, dir, spelling }),
        1 => (0..SNAP_NAMES.len()).prop_map(|name| Op::DeleteSnapshot { name }),
        1 => (0..SNAP_NAMES.len(), i(), i(), n(), 0u8..3)
            .prop_map(|(snap, src, ddir, dname, merge)| Op::Restore { snap, src, ddir, dname, merge }),
        1 => (proptest::option::of(0..SNAP_NAMES.len()), i(), proptest::bool::weighted(0.3))
            .prop_map(|(snap, path, missing)| Op::Lookup { snap, path, missing }),
    ]
}

/// A case: the workspace kind (a quarter are write-once project workspaces) and the steps.
fn case_strategy() -> impl Strategy<Value = (bool, Vec<Op>)> {
    (
        proptest::bool::weighted(0.25),
        proptest::collection::vec(op_strategy(), 1..48),
    )
}

/// The model: nodes by id, each directory with named children. File identity = node id, so
/// hard links are two names for one id. Nodes stay in the map when their last name goes
/// (like the store's rows: an open handle can still reach them).
#[derive(Debug, Clone, PartialEq)]
struct Model {
    nodes: BTreeMap<u64, MNode>,
    next: u64,
    /// A project workspace: files with committed content (size > 0 or a content version) are
    /// write-once, and only empty folders can be deleted.
    project: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct MNode {
    kind: NodeKind,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    /// Bumped by every content change: a truncate to another size; a copied file starts at
    /// 1 (its block map is committed by the copy), a created one at 0.
    content_version: u64,
    /// Link count of a non-directory: one per create, link and copy; minus one per name
    /// removed by unlink, delete_path, or a rename or copy over it. Names inside a subtree
    /// removed by delete_path keep theirs: the O(1) delete marks only the subtree's root
    /// entry, and the rows below stay as they are until the lifecycle purge.
    links: u32,
    /// A directory whose own entry was removed (rmdir, delete_path, replaced by rename or
    /// copy): the store counts it 0 links from then on.
    removed: bool,
    children: BTreeMap<String, u64>,
}

/// What a path shows: the comparison unit of the model and the store.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    node: Ident,
    kind: NodeKind,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    content_version: u64,
    nlink: u32,
}

/// A node as the model names it; a store node the harness never mapped to a model node
/// shows as `Unknown(store ino)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ident {
    Model(u64),
    Unknown(u64),
}

type Tree = BTreeMap<Vec<String>, Seen>;

type Outcome = Result<(), ErrorKind>;

impl MNode {
    fn new(kind: NodeKind, mode: u32, uid: u32, gid: u32, size: u64) -> MNode {
        MNode {
            kind,
            mode: mode & 0o7777,
            uid,
            gid,
            size,
            content_version: 0,
            links: 1,
            removed: false,
            children: BTreeMap::new(),
        }
    }

    fn is_dir(&self) -> bool {
        self.kind == NodeKind::Directory
    }
}

impl Model {
    fn new(project: bool) -> Model {
        let mut nodes = BTreeMap::new();
        // The workspace root as the store creates it.
        nodes.insert(0, MNode::new(NodeKind::Directory, 0o755, 0, 0, 0));
        Model {
            nodes,
            next: 1,
            project,
        }
    }

    fn add(&mut self, node: MNode) -> u64 {
        let id = self.next;
        self.next += 1;
        self.nodes.insert(id, node);
        id
    }

    fn node_mut(&mut self, id: u64) -> &mut MNode {
        self.nodes.get_mut(&id).expect("model node")
    }

    /// The store's convention: a directory has 2 + its subdirectories (0 once removed); a
    /// non-directory one per name.
    fn nlink(&self, id: u64) -> u32 {
        let n = &self.nodes[&id];
        match (n.is_dir(), n.removed) {
            (true, true) => 0,
            (true, false) => 2 + n.children.values().filter(|c| self.nodes[c].is_dir()).count() as u32,
            (false, _) => n.links,
        }
    }

    /// (path, id) of every node reachable from `root` (the root itself at the empty path),
    /// sorted by path.
    fn paths_from(&self, root: u64) -> Vec<(Vec<String>, u64)> {
        let mut out = vec![(vec![], root)];
        let mut i = 0;
        while i < out.len() {
            let (path, id) = out[i].clone();
            for (name, child) in &self.nodes[&id].children {
                let mut p = path.clone();
                p.push(name.clone());
                out.push((p, *child));
            }
            i += 1;
        }
        out.sort();
        out
    }

    fn paths(&self) -> Vec<(Vec<String>, u64)> {
        self.paths_from(0)
    }

    fn dirs(&self) -> Vec<u64> {
        self.paths()
            .into_iter()
            .filter(|(_, id)| self.nodes[id].is_dir())
            .map(|(_, id)| id)
            .collect()
    }

    /// Nodes with no name in the live tree, by id.
    fn unreachable(&self) -> Vec<u64> {
        let live: BTreeSet<u64> = self.paths().into_iter().map(|(_, id)| id).collect();
        self.nodes
            .keys()
            .filter(|id| !live.contains(id))
            .copied()
            .collect()
    }

    /// A node for an operation on "any node": by live path, or (`gone`) one without a name.
    fn pick_node(&self, idx: usize, gone: bool) -> u64 {
        let gone_nodes = if gone { self.unreachable() } else { Vec::new() };
        if gone_nodes.is_empty() {
            let paths = self.paths();
            paths[idx % paths.len()].1
        } else {
            gone_nodes[idx % gone_nodes.len()]
        }
    }

    fn is_ancestor_or_self(&self, anc: u64, node: u64) -> bool {
        if anc == node {
            return true;
        }
        let mut stack = vec![anc];
        while let Some(d) = stack.pop() {
            for c in self.nodes[&d].children.values() {
                if *c == node {
                    return true;
                }
                if self.nodes[c].is_dir() {
                    stack.push(*c);
                }
            }
        }
        false
    }

    /// Whether write-once forbids removing or changing the content of node `id`.
    fn write_once(&self, id: u64) -> bool {
        let n = &self.nodes[&id];
        self.project && n.kind == NodeKind::File && (n.size > 0 || n.content_version > 0)
    }

    /// Drops the name of `id` that was just removed from its directory.
    fn detach(&mut self, id: u64) {
        let n = self.node_mut(id);
        if n.is_dir() {
            n.removed = true;
        } else {
            n.links = n.links.checked_sub(1).expect("every name is counted");
        }
    }

    fn create(&mut self, dir: u64, name: &str, node: MNode) -> Outcome {
        if self.nodes[&dir].children.contains_key(name) {
            return Err(ErrorKind::Exists);
        }
        let id = self.add(node);
        self.node_mut(dir).children.insert(name.into(), id);
        Ok(())
    }

    fn link(&mut self, node: u64, dir: u64, name: &str) -> Outcome {
        if self.nodes[&node].is_dir() {
            return Err(ErrorKind::PermissionDenied);
        }
        if self.nodes[&node].links == 0 {
            return Err(ErrorKind::NotFound);
        }
        if self.nodes[&dir].children.contains_key(name) {
            return Err(ErrorKind::Exists);
        }
        self.node_mut(dir).children.insert(name.into(), node);
        self.node_mut(node).links += 1;
        Ok(())
    }

    fn remove(&mut self, dir: u64, name: &str, rmdir: bool) -> Outcome {
        let Some(&id) = self.nodes[&dir].children.get(name) else {
            return Err(ErrorKind::NotFound);
        };
        let is_dir = self.nodes[&id].is_dir();
        match (rmdir, is_dir) {
            (false, true) => return Err(ErrorKind::IsADirectory),
            (true, false) => return Err(ErrorKind::NotADirectory),
            (true, true) if !self.nodes[&id].children.is_empty() => return Err(ErrorKind::NotEmpty),
            _ => {}
        }
        if self.write_once(id) {
            return Err(ErrorKind::PermissionDenied);
        }
        self.node_mut(dir).children.remove(name);
        self.detach(id);
        Ok(())
    }

    /// One item of a batch removal: the entry must still name `expected`.
    fn unlink_expecting(&mut self, dir: u64, name: &str, expected: u64) -> Outcome {
        match self.nodes[&dir].children.get(name) {
            None => Err(ErrorKind::NotFound),
            Some(&id) if id != expected => Err(ErrorKind::Conflict),
            Some(_) => self.remove(dir, name, false),
        }
    }

    fn delete_subtree(&mut self, dir: u64, name: &str) -> Outcome {
        let id = *self.nodes[&dir].children.get(name).ok_or(ErrorKind::NotFound)?;
        let n = &self.nodes[&id];
        if (self.project && n.is_dir() && !n.children.is_empty()) || self.write_once(id) {
            return Err(ErrorKind::PermissionDenied);
        }
        self.node_mut(dir).children.remove(name);
        self.detach(id);
        Ok(())
    }

    fn rename(&mut self, sd: u64, sn: &str, dd: u64, dn: &str, mode: RenameMode) -> Outcome {
        let Some(&src) = self.nodes[&sd].children.get(sn) else {
            return Err(ErrorKind::NotFound);
        };
        let dst = self.nodes[&dd].children.get(dn).copied();
        let same_dir = sd == dd;
        if same_dir && sn == dn {
            return Ok(());
        }
        let src_dir = self.nodes[&src].is_dir();
        if src_dir && !same_dir && self.is_ancestor_or_self(src, dd) {
            return Err(ErrorKind::InvalidArgument);
        }
        match (mode, dst) {
            (RenameMode::NoReplace, Some(_)) => return Err(ErrorKind::Exists),
            (RenameMode::Exchange, None) => return Err(ErrorKind::NotFound),
            _ => {}
        }
        if let (RenameMode::Exchange, Some(dst)) = (mode, dst) {
            if dst == src {
                return Ok(());
            }
            if self.nodes[&dst].is_dir() && !same_dir && self.is_ancestor_or_self(dst, sd) {
                return Err(ErrorKind::InvalidArgument);
            }
            // Either name would then show another node: a committed file is replaced.
            if self.write_once(src) || self.write_once(dst) {
                return Err(ErrorKind::PermissionDenied);
            }
            self.node_mut(sd).children.insert(sn.into(), dst);
            self.node_mut(dd).children.insert(dn.into(), src);
            return Ok(());
        }
        if let Some(dst) = dst {
            if dst == src {
                return Ok(());
            }
            let dst_dir = self.nodes[&dst].is_dir();
            if src_dir && !dst_dir {
                return Err(ErrorKind::NotADirectory);
            }
            if !src_dir && dst_dir {
                return Err(ErrorKind::IsADirectory);
            }
            if dst_dir && !self.nodes[&dst].children.is_empty() {
                return Err(ErrorKind::NotEmpty);
            }
            if self.write_once(dst) {
                return Err(ErrorKind::PermissionDenied);
            }
            self.detach(dst);
        }
        self.node_mut(sd).children.remove(sn);
        self.node_mut(dd).children.insert(dn.into(), src);
        Ok(())
    }

    /// Copies node `src` of `from` (a snapshot's model; `None`: the live tree, read as the
    /// copy goes, like the store's single transaction does) to `dd/dn`: new nodes with the
    /// source's kind, mode, owner and size; folders merge, other conflicts follow `merge`.
    fn copy(&mut self, from: Option<&Model>, src: u64, dd: u64, dn: &str, merge: MergeMode) -> Outcome {
        if from.is_none() && self.nodes[&src].is_dir() && self.is_ancestor_or_self(src, dd) {
            return Err(ErrorKind::InvalidArgument);
        }
        let mut work = self.clone();
        let mut stack = vec![(src, dd, dn.to_string())];
        while let Some((source, parent, name)) = stack.pop() {
            let node = {
                let m = from.unwrap_or(&work);
                let n = &m.nodes[&source];
                MNode {
                    children: n.children.clone(),
                    content_version: u64::from(n.kind == NodeKind::File),
                    ..MNode::new(n.kind, n.mode, n.uid, n.gid, n.size)
                }
            };
            let existing = work.nodes[&parent].children.get(&name).copied();
            let target = match existing {
                Some(e) if work.nodes[&e].is_dir() && node.is_dir() => e,
                Some(e) => match merge {
                    MergeMode::Fail => return Err(ErrorKind::Exists),
                    MergeMode::Skip => continue,
                    MergeMode::Overwrite => {
                        if work.write_once(e) {
                            return Err(ErrorKind::PermissionDenied);
                        }
                        // As delete_path: a project workspace deletes only empty folders.
                        let full_dir = work.nodes[&e].is_dir() && !work.nodes[&e].children.is_empty();
                        if work.project && full_dir {
                            return Err(ErrorKind::PermissionDenied);
                        }
                        work.detach(e);
                        let id = work.add(MNode {
                            children: BTreeMap::new(),
                            ..node.clone()
                        });
                        work.node_mut(parent).children.insert(name.clone(), id);
                        id
                    }
                },
                None => {
                    let id = work.add(MNode {
                        children: BTreeMap::new(),
                        ..node.clone()
                    });
                    work.node_mut(parent).children.insert(name.clone(), id);
                    id
                }
            };
            if node.is_dir() {
                for (n, c) in node.children {
                    stack.push((c, target, n));
                }
            }
        }
        *self = work;
        Ok(())
    }

    fn setattr(
        &mut self,
        id: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
    ) -> Outcome {
        if let Some(size) = size {
            match self.nodes[&id].kind {
                NodeKind::Directory => return Err(ErrorKind::IsADirectory),
                NodeKind::File => {}
                _ => return Err(ErrorKind::InvalidArgument),
            }
            if size != self.nodes[&id].size && self.write_once(id) {
                return Err(ErrorKind::PermissionDenied);
            }
        }
        let n = self.node_mut(id);
        if let Some(size) = size
            && size != n.size
        {
            n.size = size;
            n.content_version += 1;
        }
        if let Some(mode) = mode {
            n.mode = mode & 0o7777;
        }
        if let Some(uid) = uid {
            n.uid = uid;
        }
        if let Some(gid) = gid {
            n.gid = gid;
        }
        Ok(())
    }

    fn seen(&self, id: u64) -> Seen {
        let n = &self.nodes[&id];
        Seen {
            node: Ident::Model(id),
            kind: n.kind,
            mode: n.mode,
            uid: n.uid,
            gid: n.gid,
            size: n.size,
            content_version: n.content_version,
            nlink: self.nlink(id),
        }
    }

    /// Files (one per name), folders below `root` and bytes of files (one size per name), as
    /// the store's usage counts them.
    fn usage(&self, root: u64) -> Usage {
        let mut u = Usage::default();
        for (path, id) in self.paths_from(root) {
            let n = &self.nodes[&id];
            match n.kind {
                NodeKind::File => {
                    u.files += 1;
                    u.bytes += n.size;
                }
                NodeKind::Directory if !path.is_empty() => u.directories += 1,
                _ => {}
            }
        }
        u
    }

    /// What the workspace's usage counters should say: bytes of the files that have a link,
    /// each node once however many names it has, and the number of linked nodes besides the
    /// root (a folder deleted whole leaves what was below it linked until the purge).
    fn counters(&self) -> (u64, u64) {
        let linked = self.nodes.iter().filter(|(id, n)| {
            **id != 0
                && match n.is_dir() {
                    true => !n.removed,
                    false => n.links > 0,
                }
        });
        linked.fold((0, 0), |(bytes, nodes), (_, n)| {
            let size = if n.kind == NodeKind::File { n.size } else { 0 };
            (bytes + size, nodes + 1)
        })
    }

    /// What the tree under `root` should show.
    fn tree(&self, root: u64) -> Tree {
        self.paths_from(root)
            .into_iter()
            .map(|(p, id)| (p, self.seen(id)))
            .collect()
    }
}

/// A live snapshot of the model.
#[derive(Debug, Clone)]
struct MSnap {
    /// Canonical path ("/" or "/a/b").
    path: String,
    root: u64,
    model: Model,
}

fn kind_of(r: Result<impl Sized, drive::MetaError>) -> Outcome {
    r.map(|_| ()).map_err(|e| e.kind())
}

/// Lines describing where two trees differ (empty when equal).
fn diff(expected: &Tree, got: &Tree) -> String {
    let mut out = String::new();
    let show = |p: &Vec<String>| format!("/{}", p.join("/"));
    for (p, e) in expected {
        match got.get(p) {
            None => writeln!(out, "  {}: missing in the store, model has {e:?}", show(p)).unwrap(),
            Some(g) if g != e => writeln!(out, "  {}:\n    store {g:?}\n    model {e:?}", show(p)).unwrap(),
            Some(_) => {}
        }
    }
    for (p, g) in got {
        if !expected.contains_key(p) {
            writeln!(out, "  {}: only in the store: {g:?}", show(p)).unwrap();
        }
    }
    out
}

struct Harness {
    store: PgMetaStore,
    ws: Workspace,
    model: Model,
    /// model id -> store node id, and back.
    ids: BTreeMap<u64, NodeId>,
    inos: BTreeMap<NodeId, u64>,
    snapshots: BTreeMap<String, MSnap>,
    /// The store's record of each live snapshot, as create_snapshot returned it.
    records: BTreeMap<String, Snapshot>,
    /// Index of the operation being run, for failure messages.
    step: usize,
}

impl Harness {
    async fn new(store: &PgMetaStore, ws_name: &str, kind: WorkspaceKind) -> Harness {
        let ws = workspace(store, ws_name, kind).await;
        Harness {
            store: store.clone(),
            ids: BTreeMap::from([(0, ws.root)]),
            inos: BTreeMap::from([(ws.root, 0)]),
            ws,
            model: Model::new(kind == WorkspaceKind::Project),
            snapshots: BTreeMap::new(),
            records: BTreeMap::new(),
            step: 0,
        }
    }

    fn node(&self, model_id: u64) -> NodeId {
        self.ids[&model_id]
    }

    /// Learns the store ids of new model nodes from the live tree just read, by path. A
    /// store node that already stands for another model node is not taken (a copy must make
    /// new nodes), nor is a path the store lacks: the comparison reports both.
    fn learn_ids(&mut self, live: &BTreeMap<Vec<String>, Attr>) {
        for (path, id) in self.model.paths() {
            if self.ids.contains_key(&id) {
                continue;
            }
            if let Some(attr) = live.get(&path)
                && !self.inos.contains_key(&attr.ino)
            {
                self.ids.insert(id, attr.ino);
                self.inos.insert(attr.ino, id);
            }
        }
    }

    async fn apply(&mut self, op: &Op) {
        let a = actor();
        let ws = self.ws.id;
        let dirs = self.model.dirs();
        let pick = |v: &Vec<u64>, i: usize| v[i % v.len()];
        let name = |i: usize| Name::parse(NAMES[i]).unwrap();
        let (expected, got) = match op {
            Op::Create {
                dir,
                name: n,
                kind,
                mode,
                owner,
            } => {
                let d = pick(&dirs, *dir);
                let (mode, owner) = (MODES[*mode], IDS[*owner]);
                let (kind, target) = match kind {
                    0 | 3 => (NodeKind::Directory, None),
                    1 | 4 => (NodeKind::File, None),
                    t => (NodeKind::Symlink, Some(SYMLINK_TARGETS[usize::from(*t == 5)])),
                };
                let spec = NewNode {
                    symlink_target: target.map(|t| t.as_bytes().to_vec()),
                    ..NewNode::new(kind, mode).owned_by(owner, owner)
                };
                let size = target.map_or(0, |t| t.len() as u64);
                let e = self
                    .model
                    .create(d, NAMES[*n], MNode::new(kind, mode, owner, owner, size));
                let g = self.store.create(&a, ws, self.node(d), &name(*n), &spec).await;
                (e, kind_of(g))
            }
            Op::Link {
                node,
                gone,
                dir,
                name: n,
            } => {
                let (f, d) = (self.model.pick_node(*node, *gone), pick(&dirs, *dir));
                let e = self.model.link(f, d, NAMES[*n]);
                let g = self
                    .store
                    .link(&a, ws, self.node(f), self.node(d), &name(*n))
                    .await;
                (e, kind_of(g))
            }
            Op::Unlink { dir, name: n } | Op::Rmdir { dir, name: n } => {
                let d = pick(&dirs, *dir);
                let rmdir = matches!(op, Op::Rmdir { .. });
                let e = self.model.remove(d, NAMES[*n], rmdir);
                let g = if rmdir {
                    self.store.rmdir(&a, ws, self.node(d), &name(*n)).await
                } else {
                    self.store.unlink(&a, ws, self.node(d), &name(*n)).await
                };
                (e, kind_of(g))
            }
            Op::UnlinkMany { items } => {
                let mut queued = Vec::new();
                let mut e = Vec::new();
                for (dir, n, stale) in items {
                    let d = pick(&dirs, *dir);
                    // The root is never an entry's node: a stale expectation.
                    let expected = match self.model.nodes[&d].children.get(NAMES[*n]) {
                        Some(&id) if !stale => id,
                        _ => 0,
                    };
                    e.push(self.model.unlink_expecting(d, NAMES[*n], expected));
                    queued.push((
                        d,
                        QueuedUnlink {
                            parent: self.node(d),
                            name: name(*n),
                            ino: self.node(expected),
                            actor: a.clone(),
                        },
                    ));
                }
                let g = self
                    .store
                    .unlink_many(ws, &queued.iter().map(|(_, q)| q.clone()).collect::<Vec<_>>())
                    .await
                    .unwrap_or_else(|err| panic!("step {}: {op:?} failed as a whole: {err}", self.step));
                let g: Vec<Outcome> = g
                    .iter()
                    .zip(&queued)
                    .map(|(r, (d, _))| match r {
                        // Each removal returns its directory's attributes after the batch.
                        Ok(attr) => {
                            assert_eq!(
                                self.seen(attr),
                                self.model.seen(*d),
                                "step {}: directory attributes returned by {op:?}",
                                self.step
                            );
                            Ok(())
                        }
                        Err(err) => Err(err.kind()),
                    })
                    .collect();
                assert_eq!(g, e, "step {}: outcomes of {op:?}", self.step);
                (Ok(()), Ok(()))
            }
            Op::Rename {
                sdir,
                sname,
                ddir,
                dname,
                mode,
            } => {
                let (sd, dd) = (pick(&dirs, *sdir), pick(&dirs, *ddir));
                let mode = [RenameMode::Replace, RenameMode::NoReplace, RenameMode::Exchange][*mode as usize];
                let e = self.model.rename(sd, NAMES[*sname], dd, NAMES[*dname], mode);
                let g = self
                    .store
                    .rename(
                        &a,
                        ws,
                        self.node(sd),
                        &name(*sname),
                        self.node(dd),
                        &name(*dname),
                        mode,
                    )
                    .await;
                (e, kind_of(g))
            }
            Op::Copy {
                src,
                ddir,
                dname,
                merge,
            } => {
                let paths = self.model.paths();
                let (s, dd) = (paths[src % paths.len()].1, pick(&dirs, *ddir));
                let merge = [MergeMode::Fail, MergeMode::Overwrite, MergeMode::Skip][*merge as usize];
                let e = self.model.copy(None, s, dd, NAMES[*dname], merge);
                let g = self
                    .store
                    .copy(
                        &a,
                        ws,
                        View::Live,
                        self.node(s),
                        self.node(dd),
                        &name(*dname),
                        merge,
                    )
                    .await;
                (e, kind_of(g))
            }
            Op::DeletePath { node } => {
                let paths = self.model.paths();
                let (path, _) = paths[node % paths.len()].clone();
                let e = match path.split_last() {
                    None => Err(ErrorKind::InvalidArgument),
                    Some((last, parent_path)) => {
                        let parent = paths.iter().find(|(p, _)| p == parent_path).unwrap().1;
                        self.model.delete_subtree(parent, last)
                    }
                };
                (e, kind_of(self.store.delete_path(&a, ws, &path.join("/")).await))
            }
            Op::SetAttr {
                node,
                gone,
                mode,
                uid,
                gid,
                size,
            } => {
                let id = self.model.pick_node(*node, *gone);
                let change = SetAttr {
                    mode: mode.map(|m| MODES[m]),
                    uid: uid.map(|u| IDS[u]),
                    gid: gid.map(|g| IDS[g]),
                    size: size.map(|s| SIZES[s]),
                    ..SetAttr::default()
                };
                let e = self
                    .model
                    .setattr(id, change.mode, change.uid, change.gid, change.size);
                let g = self.store.setattr(&a, ws, self.node(id), &change).await;
                // The attributes setattr returns are the node's new ones (also for a node
                // without a name, which no tree walk shows).
                if let (Ok(()), Ok(attr)) = (&e, &g) {
                    assert_eq!(
                        self.seen(attr),
                        self.model.seen(id),
                        "step {}: attributes returned by {op:?}",
                        self.step
                    );
                }
                (e, kind_of(g))
            }
            Op::Snapshot {
                name: sn,
                dir,
                spelling,
            } => {
                let snap_name = SNAP_NAMES[*sn];
                let (path, root) = match dir {
                    None => (vec![], 0),
                    Some(i) => {
                        let paths = self.model.paths();
                        paths[i % paths.len()].clone()
                    }
                };
                let spelled = match spelling {
                    0 => format!("/{}", path.join("/")),
                    1 => path.iter().map(|c| format!("{c}/")).collect(),
                    _ => path.iter().map(|c| format!("//{c}")).collect::<String>() + "/",
                };
                let e = if self.snapshots.contains_key(snap_name) {
                    Err(ErrorKind::Exists)
                } else if !self.model.nodes[&root].is_dir() {
                    Err(ErrorKind::NotADirectory)
                } else {
                    let snap = MSnap {
                        path: format!("/{}", path.join("/")),
                        root,
                        model: self.model.clone(),
                    };
                    self.snapshots.insert(snap_name.to_string(), snap);
                    Ok(())
                };
                let g = self.store.create_snapshot(&a, ws, snap_name, &spelled).await;
                if let (Ok(()), Ok(snap)) = (&e, &g) {
                    assert_eq!(
                        (snap.path.as_str(), self.seen_ino(snap.root)),
                        (format!("/{}", path.join("/")).as_str(), Ident::Model(root)),
                        "step {}: path and root of the snapshot {op:?} made",
                        self.step
                    );
                    self.records.insert(snap_name.to_string(), snap.clone());
                }
                (e, kind_of(g))
            }
            Op::DeleteSnapshot { name: sn } => {
                let snap_name = SNAP_NAMES[*sn];
                self.records.remove(snap_name);
                let e = match self.snapshots.remove(snap_name) {
                    Some(_) => Ok(()),
                    None => Err(ErrorKind::NotFound),
                };
                (e, kind_of(self.store.delete_snapshot(&a, ws, snap_name).await))
            }
            Op::Lookup { snap, path, missing } => {
                let found = snap.map(|i| SNAP_NAMES[i]).and_then(|n| {
                    let (msnap, s) = (self.snapshots.get(n)?, self.records.get(n)?);
                    Some((View::At(s.epoch), s.root, &msnap.model, msnap.root))
                });
                let (view, root, model, mroot) = found.unwrap_or((View::Live, self.ws.root, &self.model, 0));
                let paths = model.paths_from(mroot);
                let (mut p, id) = paths[path % paths.len()].clone();
                let n = &model.nodes[&id];
                let absent = NAMES.iter().find(|c| !n.children.contains_key(**c));
                let e = match (missing, absent) {
                    (false, _) | (true, None) => Ok(model.seen(id)),
                    (true, Some(c)) => {
                        p.push(c.to_string());
                        Err(if n.is_dir() {
                            ErrorKind::NotFound
                        } else {
                            ErrorKind::NotADirectory
                        })
                    }
                };
                let g = self
                    .store
                    .resolve_from(view, root, &p.join("/"))
                    .await
                    .map(|a| self.seen(&a))
                    .map_err(|e| e.kind());
                assert_eq!(g, e, "step {}: {op:?} of /{}", self.step, p.join("/"));
                (Ok(()), Ok(()))
            }
            Op::Restore {
                snap,
                src,
                ddir,
                dname,
                merge,
            } => {
                let snap_name = SNAP_NAMES[*snap];
                let found = self.store.get_snapshot(ws, snap_name).await;
                let (Some(msnap), Ok(snapshot)) = (self.snapshots.get(snap_name), &found) else {
                    let e = match self.snapshots.contains_key(snap_name) {
                        true => Ok(()),
                        false => Err(ErrorKind::NotFound),
                    };
                    assert_eq!(kind_of(found), e, "step {}: get_snapshot in {op:?}", self.step);
                    return;
                };
                let paths = msnap.model.paths_from(msnap.root);
                let (s, dd) = (paths[src % paths.len()].1, pick(&dirs, *ddir));
                let merge = [MergeMode::Fail, MergeMode::Overwrite, MergeMode::Skip][*merge as usize];
                let e = self.model.copy(Some(&msnap.model), s, dd, NAMES[*dname], merge);
                let g = self
                    .store
                    .copy(
                        &a,
                        ws,
                        View::At(snapshot.epoch),
                        self.node(s),
                        self.node(dd),
                        &name(*dname),
                        merge,
                    )
                    .await;
                (e, kind_of(g))
            }
        };
        if std::env::var_os("MODEL_TRACE").is_some() {
            eprintln!("{op:?} -> {got:?} (model {expected:?})");
        }
        assert_eq!(got, expected, "step {}: outcome of {op:?}", self.step);
    }

    fn seen(&self, a: &Attr) -> Seen {
        Seen {
            node: self.seen_ino(a.ino),
            kind: a.kind,
            mode: a.mode,
            uid: a.uid,
            gid: a.gid,
            size: a.size,
            content_version: a.content_version,
            nlink: a.nlink,
        }
    }

    /// The attributes of every path under `root` in `view`, read with getattr and
    /// readdirplus, one level of folders at a time (the folders of a level concurrently).
    async fn store_tree(&self, view: View, root: NodeId) -> BTreeMap<Vec<String>, Attr> {
        let attr = self
            .store
            .getattr(view, root)
            .await
            .expect("getattr of a view's root");
        let mut out = BTreeMap::from([(vec![], attr)]);
        let mut level = vec![(vec![], root)];
        while !level.is_empty() {
            let mut listings = Vec::new();
            for (_, dir) in &level {
                listings.push(self.read_dir(view, *dir).await);
            }
            let mut next = Vec::new();
            for ((path, _), entries) in level.iter().zip(listings) {
                for e in entries {
                    let mut p = path.clone();
                    p.push(e.entry.name.to_string_lossy());
                    assert_eq!(
                        (e.entry.ino, e.entry.kind),
                        (e.attr.ino, e.attr.kind),
                        "readdir entry {p:?}"
                    );
                    if e.attr.kind == NodeKind::Directory {
                        next.push((p.clone(), e.attr.ino));
                    }
                    out.insert(p, e.attr);
                }
            }
            level = next;
        }
        out
    }

    /// All entries of `dir` in `view`, in pages of 2 (which exercises the keyset pagination
    /// too); a short page is the last.
    async fn read_dir(&self, view: View, dir: NodeId) -> Vec<DirEntryPlus> {
        const PAGE: usize = 2;
        let mut all: Vec<DirEntryPlus> = Vec::new();
        loop {
            let after = all.last().map(|e| e.entry.name.clone());
            let page = self
                .store
                .readdir_plus(view, dir, after.as_ref(), PAGE)
                .await
                .expect("readdir");
            let done = page.len() < PAGE;
            all.extend(page);
            if done {
                return all;
            }
        }
    }

    fn seen_tree(&self, attrs: &BTreeMap<Vec<String>, Attr>) -> Tree {
        attrs.iter().map(|(p, a)| (p.clone(), self.seen(a))).collect()
    }

    /// What differs between the store's view `view` from `root` and the model's tree (and,
    /// with `usage`, the usage totals) from `mroot`.
    async fn check_view(&self, view: View, root: NodeId, model: &Model, mroot: u64, usage: bool) -> String {
        let (tree, got) = tokio::join!(self.store_tree(view, root), async {
            match usage {
                true => Some(self.store.usage(view, root).await.expect("usage")),
                false => None,
            }
        });
        let mut out = diff(&model.tree(mroot), &self.seen_tree(&tree));
        let want = model.usage(mroot);
        if let Some(got) = got
            && got != want
        {
            writeln!(out, "  usage: store {got:?}, model {want:?}").unwrap();
        }
        out
    }

    /// Panics with a description of every view that differs from the model: the live tree
    /// (read first: new nodes are mapped to model nodes by their paths in it) and each
    /// snapshot's tree (read concurrently). After the last step (`last`), also the list of
    /// snapshots and every view's usage totals (each is one more query per view, and would
    /// make every step slower for what a wrong tree shows anyway).
    async fn check(&mut self, op: &Op, last: bool) {
        let live = self.store_tree(View::Live, self.ws.root).await;
        self.learn_ids(&live);
        let mut problems = String::new();
        let mut report = |what: String, d: String| {
            if !d.is_empty() {
                problems.push_str(&format!("{what}:\n{d}"));
            }
        };
        let mut live_d = diff(&self.model.tree(0), &self.seen_tree(&live));
        let counted = self
            .store
            .workspace_usage(self.ws.id)
            .await
            .expect("workspace usage");
        if (counted.bytes, counted.nodes) != self.model.counters() {
            writeln!(
                live_d,
                "  usage counters (bytes, nodes): store {:?}, model {:?}",
                (counted.bytes, counted.nodes),
                self.model.counters()
            )
            .unwrap();
        }
        if last {
            let (got, want) = (
                self.store.usage(View::Live, self.ws.root).await.expect("usage"),
                self.model.usage(0),
            );
            if got != want {
                writeln!(live_d, "  usage: store {got:?}, model {want:?}").unwrap();
            }
            let listed = self
                .store
                .list_snapshots(self.ws.id)
                .await
                .expect("list snapshots");
            let got: Vec<(&str, &str, Ident, Epoch)> = listed
                .iter()
                .map(|s| (s.name.as_str(), s.path.as_str(), self.seen_ino(s.root), s.epoch))
                .collect();
            let want: Vec<(&str, &str, Ident, Epoch)> = self
                .snapshots
                .iter()
                .map(|(n, s)| {
                    (
                        n.as_str(),
                        s.path.as_str(),
                        Ident::Model(s.root),
                        self.records[n].epoch,
                    )
                })
                .collect();
            // Listed oldest first; the model's are by name.
            let mut got = got;
            got.sort_by_key(|s| s.0);
            if got != want {
                report(
                    "snapshots (name, path, root, epoch)".into(),
                    format!("  store {got:?}\n  model {want:?}\n"),
                );
            }
        }
        report("live tree".into(), live_d);
        let this = &*self;
        let views = this.snapshots.iter().map(|(name, msnap)| {
            let rec = &this.records[name];
            async move {
                let d = this
                    .check_view(View::At(rec.epoch), rec.root, &msnap.model, msnap.root, last)
                    .await;
                (format!("snapshot {name} of {}", msnap.path), d)
            }
        });
        for v in views {
            let (what, d) = v.await;
            report(what, d);
        }
        assert!(
            problems.is_empty(),
            "after step {} ({op:?}) the store differs from the model:\n{problems}",
            self.step
        );
    }

    fn seen_ino(&self, ino: NodeId) -> Ident {
        self.inos
            .get(&ino)
            .map_or(Ident::Unknown(ino.0), |id| Ident::Model(*id))
    }
}

/// Runs `ops` against a fresh workspace and the model, comparing after every step (what each
/// generated case does; regression tests call it with a shrunk case).
async fn replay(store: &PgMetaStore, ws_name: &str, kind: WorkspaceKind, ops: &[Op]) {
    let t = std::time::Instant::now();
    let mut h = Harness::new(store, ws_name, kind).await;
    T_WS.fetch_add(
        t.elapsed().as_micros() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    for (step, op) in ops.iter().enumerate() {
        h.step = step;
        let t = std::time::Instant::now();
        h.apply(op).await;
        T_APPLY.fetch_add(
            t.elapsed().as_micros() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let t = std::time::Instant::now();
        h.check(op, step + 1 == ops.len()).await;
        T_CHECK.fetch_add(
            t.elapsed().as_micros() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        N_STEPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

static T_APPLY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static T_CHECK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static T_WS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static N_STEPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
thread_local! {
    /// Set while a generated case runs: its panics are the runner's to report (it shrinks
    /// them and reports the minimal case once), not the default hook's to print each time.
    static IN_CASE: Cell<bool> = const { Cell::new(false) };
}

fn quiet_case_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_CASE.with(Cell::get) {
                default(info);
            }
        }));
    });
}

struct InCase;

impl InCase {
    fn enter() -> InCase {
        IN_CASE.with(|c| c.set(true));
        InCase
    }
}

impl Drop for InCase {
    fn drop(&mut self) {
        IN_CASE.with(|c| c.set(false));
    }
}

/// The seed lines of the regressions file.
fn saved_seeds() -> Vec<String> {
    std::fs::read_to_string(REGRESSIONS)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("cc "))
        .map(str::to_string)
        .collect()
}

fn ws_kind(project: bool) -> WorkspaceKind {
    if project {
        WorkspaceKind::Project
    } else {
        WorkspaceKind::User
    }
}

/// `META_MODEL_SEED`: unset for the fixed default, a u64 (decimal or 0x-hex), or `random`.
fn base_seed() -> u64 {
    let Ok(s) = std::env::var(SEED_VAR) else {
        return DEFAULT_SEED;
    };
    if s == "random" {
        use std::hash::{BuildHasher, Hasher};
        return std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
    }
    let parsed = match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.unwrap_or_else(|_| panic!("{SEED_VAR}={s}: expected a u64 (decimal or 0x-hex) or `random`"))
}

/// Runs `default_cases` generated cases (or `META_MODEL_CASES`), after the saved ones.
/// `part` offsets the generator seed so the two halves explore different cases.
fn run_model_cases(test: &'static str, ws_prefix: &'static str, part: u64, default_cases: u32) {
    let base = base_seed();
    let seed = base.wrapping_add(part);
    let cases = match std::env::var(CASES_VAR) {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("{CASES_VAR}={s}: expected a number")),
        Err(_) => default_cases,
    };
    eprintln!("{test}: {SEED_VAR}={base} (generator seed {seed}), {cases} cases after the saved ones");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let t0 = std::time::Instant::now();
    let store = rt.block_on(store());
    eprintln!("PROFILE setup {} ms", t0.elapsed().as_millis());
    let counter = std::sync::atomic::AtomicU32::new(0);
    let config = ProptestConfig {
        cases,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
        source_file: Some(file!()),
        // Bounded by count, not time, so that the shrunk case is reproducible too.
        max_shrink_iters: 2048,
        ..ProptestConfig::default()
    };
    let saved_before = saved_seeds();
    let mut runner = TestRunner::new(config);
    quiet_case_panics();
    let result = runner.run(&case_strategy(), |(project, ops)| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _quiet = InCase::enter();
        rt.block_on(replay(
            &store,
            &format!("{ws_prefix}-{n}"),
            ws_kind(project),
            &ops,
        ));
        Ok(())
    });
    eprintln!(
        "PROFILE total {} ms apply {} ms check {} ms ws {} ms steps {}",
        t0.elapsed().as_millis(),
        T_APPLY.load(std::sync::atomic::Ordering::Relaxed) / 1000,
        T_CHECK.load(std::sync::atomic::Ordering::Relaxed) / 1000,
        T_WS.load(std::sync::atomic::Ordering::Relaxed) / 1000,
        N_STEPS.load(std::sync::atomic::Ordering::Relaxed)
    );
    eprintln!(
        "{test}: ran {} cases (with shrinking)",
        counter.load(std::sync::atomic::Ordering::Relaxed)
    );
    match result {
        Ok(()) => {}
        Err(TestError::Abort(why)) => panic!("{test}: aborted: {why}"),
        Err(TestError::Fail(why, (project, ops))) => {
            // proptest saved a new case's seed with the shrunk case as the line's comment (the
            // other part of the test may have saved one too, in the same file).
            let shrunk = format!("{:?}", (project, &ops));
            let line = saved_seeds()
                .into_iter()
                .find(|l| l.split_once(" # shrinks to ").is_some_and(|(_, v)| v == shrunk));
            let origin = match line {
                Some(l) if !saved_before.contains(&l) => format!(
                    "A new case: its seed was appended to {REGRESSIONS} (commit it):\n    {}",
                    l.split(" #").next().unwrap_or(&l)
                ),
                Some(l) => format!(
                    "A saved case from {REGRESSIONS}:\n    {}",
                    l.split(" #").next().unwrap_or(&l)
                ),
                None => format!("A saved case from {REGRESSIONS} (those run first)."),
            };
            let mut listing = String::new();
            for op in &ops {
                // Debug shows a Vec as `[..]`; the test needs `vec![..]`.
                let op = format!("{op:?}").replace("items: [", "items: vec![");
                writeln!(listing, "            {op},").unwrap();
            }
            panic!(
                "{test}: the store and the model disagree.\n\
                 Seed: {SEED_VAR}={base} (ChaCha generator seed {seed}). Rerun:\n    \
                 {SEED_VAR}={base} cargo nextest run -p drive --test meta_model {test}\n\
                 {origin}\n\
                 Minimal case ({} ops) fails with: {why}\n\
                 As a regression test:\n\n\
                 #[tokio::test]\n\
                 async fn regression_NAME() {{\n    \
                     use Op::*;\n    \
                     let store = store().await;\n    \
                     replay(\n        &store,\n        \"regression-NAME\",\n        WorkspaceKind::{:?},\n        &[\n\
                 {listing}        ],\n    )\n    .await;\n\
                 }}\n",
                ops.len(),
                ws_kind(project),
            );
        }
    }
}

#[test]
fn store_matches_reference_model_part_1() {
    run_model_cases("store_matches_reference_model_part_1", "model-a", 0, 250);
}

#[test]
fn store_matches_reference_model_part_2() {
    run_model_cases("store_matches_reference_model_part_2", "model-b", 1, 250);
}

/// Found by the model (seed cc 9fa2ee2a… in the regressions file): /a holds
/// file /a/a and folder /a/c; copying /a/a over /a/c with Overwrite replaces the folder by a
/// file, and /a must go back to 2 links (the store left it at 3: copy's Overwrite branch never
/// dropped the replaced folder's link to its parent).
#[tokio::test]
async fn copy_over_folder_drops_parent_link() {
    use Op::*;
    let store = store().await;
    replay(
        &store,
        "regression-copy-over-folder",
        WorkspaceKind::User,
        &[
            Create {
                dir: 0,
                name: 0,
                kind: 3,
                mode: 0,
                owner: 0,
            },
            Create {
                dir: 7,
                name: 0,
                kind: 1,
                mode: 0,
                owner: 0,
            },
            Create {
                dir: 11,
                name: 2,
                kind: 0,
                mode: 0,
                owner: 0,
            },
            Create {
                dir: 28,
                name: 2,
                kind: 0,
                mode: 0,
                owner: 0,
            },
            Link {
                node: 31,
                gone: false,
                dir: 0,
                name: 0,
            },
            Copy {
                src: 30,
                ddir: 16,
                dname: 2,
                merge: 1,
            },
        ],
    )
    .await;
}

/// Found by the model: /shot.0001.exr is a file; a batch removes it twice, first expecting
/// another node (Conflict: left alone), then expecting the right one, which must remove it
/// (the store answered NotFound for the second item and kept the file: unlink_many consumed
/// the entry while judging the first).
#[tokio::test]
async fn unlink_many_judges_each_item_of_a_name() {
    use Op::*;
    let store = store().await;
    replay(
        &store,
        "regression-unlink-many-twice",
        WorkspaceKind::User,
        &[
            Create {
                dir: 0,
                name: 3,
                kind: 1,
                mode: 0,
                owner: 0,
            },
            UnlinkMany {
                items: vec![(0, 3, true), (0, 3, false)],
            },
        ],
    )
    .await;
}

/// Written after reading copy.rs and confirmed by the model: in a project workspace /a/b is a
/// file with committed content (truncated to 4096: content version 1), so neither `unlink`
/// nor `delete_path` of /a may remove it; copying file /c over folder /a with Overwrite must
/// be refused as well (the store replaced /a, and /a/b was gone).
#[tokio::test]
async fn project_copy_does_not_replace_a_full_folder() {
    use Op::*;
    let store = store().await;
    replay(
        &store,
        "regression-project-copy-over-full-folder",
        WorkspaceKind::Project,
        &[
            Create {
                dir: 0,
                name: 0,
                kind: 0,
                mode: 0,
                owner: 0,
            },
            Create {
                dir: 1,
                name: 1,
                kind: 1,
                mode: 0,
                owner: 0,
            },
            SetAttr {
                node: 2,
                gone: false,
                mode: None,
                uid: None,
                gid: None,
                size: Some(2),
            },
            DeletePath { node: 1 },
            Create {
                dir: 0,
                name: 2,
                kind: 1,
                mode: 0,
                owner: 0,
            },
            Copy {
                src: 3,
                ddir: 0,
                dname: 0,
                merge: 1,
            },
        ],
    )
    .await;
}
