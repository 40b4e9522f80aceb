//! Reference-model test: random operation sequences against the metadata store (real
//! PostgreSQL) and a simple in-memory model; after every step the live tree and every
//! snapshot view must equal the model's, and each operation must fail or succeed alike.

mod common;

use std::collections::BTreeMap;

use common::*;
use drive::ErrorKind;
use drive::MetaStore;
use drive::model::*;
use proptest::prelude::*;

const NAMES: [&str; 4] = ["a", "b", "c", "shot.0001.exr"];

#[derive(Debug, Clone)]
enum Op {
    Create {
        dir: usize,
        name: usize,
        kind: u8,
    },
    Link {
        file: usize,
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
    DeletePath {
        node: usize,
    },
    Snapshot,
    DeleteSnapshot {
        idx: usize,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let i = || 0usize..64;
    let n = || 0usize..NAMES.len();
    prop_oneof![
        5 => (i(), n(), 0u8..4).prop_map(|(dir, name, kind)| Op::Create { dir, name, kind }),
        1 => (i(), i(), n()).prop_map(|(file, dir, name)| Op::Link { file, dir, name }),
        2 => (i(), n()).prop_map(|(dir, name)| Op::Unlink { dir, name }),
        1 => (i(), n()).prop_map(|(dir, name)| Op::Rmdir { dir, name }),
        3 => (i(), n(), i(), n(), 0u8..3).prop_map(|(sdir, sname, ddir, dname, mode)| Op::Rename { sdir, sname, ddir, dname, mode }),
        1 => (i(), i(), n(), 0u8..3).prop_map(|(src, ddir, dname, merge)| Op::Copy { src, ddir, dname, merge }),
        1 => i().prop_map(|node| Op::DeletePath { node }),
        1 => Just(Op::Snapshot),
        1 => i().prop_map(|idx| Op::DeleteSnapshot { idx }),
    ]
}

/// The model: nodes by id, each directory with named children. File identity = node id, so
/// hard links are two names for one id.
#[derive(Debug, Clone, PartialEq)]
struct Model {
    nodes: BTreeMap<u64, MNode>,
    next: u64,
}

#[derive(Debug, Clone, PartialEq)]
struct MNode {
    kind: NodeKind,
    children: BTreeMap<String, u64>,
}

type Outcome = Result<(), ErrorKind>;

impl Model {
    fn new() -> Model {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            0,
            MNode {
                kind: NodeKind::Directory,
                children: BTreeMap::new(),
            },
        );
        Model { nodes, next: 1 }
    }

    fn add(&mut self, kind: NodeKind) -> u64 {
        let id = self.next;
        self.next += 1;
        self.nodes.insert(
            id,
            MNode {
                kind,
                children: BTreeMap::new(),
            },
        );
        id
    }

    /// (path, id) of every node reachable from the root, sorted by path.
    fn paths(&self) -> Vec<(Vec<String>, u64)> {
        let mut out = vec![(vec![], 0)];
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

    fn dirs(&self) -> Vec<u64> {
        self.paths()
            .into_iter()
            .filter(|(_, id)| self.nodes[id].kind == NodeKind::Directory)
            .map(|(_, id)| id)
            .collect()
    }

    fn files(&self) -> Vec<u64> {
        self.paths()
            .into_iter()
            .filter(|(_, id)| self.nodes[id].kind == NodeKind::File)
            .map(|(_, id)| id)
            .collect()
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
                if self.nodes[c].kind == NodeKind::Directory {
                    stack.push(*c);
                }
            }
        }
        false
    }

    fn create(&mut self, dir: u64, name: &str, kind: NodeKind) -> Outcome {
        if self.nodes[&dir].children.contains_key(name) {
            return Err(ErrorKind::Exists);
        }
        let id = self.add(kind);
        self.nodes.get_mut(&dir).unwrap().children.insert(name.into(), id);
        Ok(())
    }

    fn link(&mut self, file: u64, dir: u64, name: &str) -> Outcome {
        if self.nodes[&dir].children.contains_key(name) {
            return Err(ErrorKind::Exists);
        }
        self.nodes
            .get_mut(&dir)
            .unwrap()
            .children
            .insert(name.into(), file);
        Ok(())
    }

    fn remove(&mut self, dir: u64, name: &str, rmdir: bool) -> Outcome {
        let Some(&id) = self.nodes[&dir].children.get(name) else {
            return Err(ErrorKind::NotFound);
        };
        let is_dir = self.nodes[&id].kind == NodeKind::Directory;
        match (rmdir, is_dir) {
            (false, true) => return Err(ErrorKind::IsADirectory),
            (true, false) => return Err(ErrorKind::NotADirectory),
            (true, true) if !self.nodes[&id].children.is_empty() => return Err(ErrorKind::NotEmpty),
            _ => {}
        }
        self.nodes.get_mut(&dir).unwrap().children.remove(name);
        Ok(())
    }

    fn delete_subtree(&mut self, dir: u64, name: &str) -> Outcome {
        self.nodes
            .get_mut(&dir)
            .unwrap()
            .children
            .remove(name)
            .map(|_| ())
            .ok_or(ErrorKind::NotFound)
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
        let src_dir = self.nodes[&src].kind == NodeKind::Directory;
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
            if self.nodes[&dst].kind == NodeKind::Directory && !same_dir && self.is_ancestor_or_self(dst, sd)
            {
                return Err(ErrorKind::InvalidArgument);
            }
            self.nodes.get_mut(&sd).unwrap().children.insert(sn.into(), dst);
            self.nodes.get_mut(&dd).unwrap().children.insert(dn.into(), src);
            return Ok(());
        }
        if let Some(dst) = dst {
            if dst == src {
                return Ok(());
            }
            let dst_dir = self.nodes[&dst].kind == NodeKind::Directory;
            if src_dir && !dst_dir {
                return Err(ErrorKind::NotADirectory);
            }
            if !src_dir && dst_dir {
                return Err(ErrorKind::IsADirectory);
            }
            if dst_dir && !self.nodes[&dst].children.is_empty() {
                return Err(ErrorKind::NotEmpty);
            }
        }
        self.nodes.get_mut(&sd).unwrap().children.remove(sn);
        self.nodes.get_mut(&dd).unwrap().children.insert(dn.into(), src);
        Ok(())
    }

    fn copy(&mut self, src: u64, dd: u64, dn: &str, merge: MergeMode) -> Outcome {
        if self.nodes[&src].kind == NodeKind::Directory && self.is_ancestor_or_self(src, dd) {
            return Err(ErrorKind::InvalidArgument);
        }
        let mut work = self.clone();
        let mut stack = vec![(src, dd, dn.to_string())];
        while let Some((from, parent, name)) = stack.pop() {
            let kind = work.nodes[&from].kind;
            let existing = work.nodes[&parent].children.get(&name).copied();
            let target = match existing {
                Some(e) if work.nodes[&e].kind == NodeKind::Directory && kind == NodeKind::Directory => e,
                Some(_) => match merge {
                    MergeMode::Fail => return Err(ErrorKind::Exists),
                    MergeMode::Skip => continue,
                    MergeMode::Overwrite => {
                        let id = work.add(kind);
                        work.nodes
                            .get_mut(&parent)
                            .unwrap()
                            .children
                            .insert(name.clone(), id);
                        id
                    }
                },
                None => {
                    let id = work.add(kind);
                    work.nodes
                        .get_mut(&parent)
                        .unwrap()
                        .children
                        .insert(name.clone(), id);
                    id
                }
            };
            if kind == NodeKind::Directory {
                for (n, c) in work.nodes[&from].children.clone() {
                    stack.push((c, target, n));
                }
            }
        }
        *self = work;
        Ok(())
    }

    /// Canonical form: path -> (kind, first path of the same node), so hard links compare
    /// without depending on ids.
    fn canonical(&self) -> BTreeMap<Vec<String>, (NodeKind, Vec<String>)> {
        canonicalize(
            self.paths()
                .into_iter()
                .map(|(p, id)| (p, self.nodes[&id].kind, id)),
        )
    }
}

fn canonicalize(
    items: impl IntoIterator<Item = (Vec<String>, NodeKind, u64)>,
) -> BTreeMap<Vec<String>, (NodeKind, Vec<String>)> {
    let mut items: Vec<_> = items.into_iter().collect();
    items.sort();
    let mut first: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (path, kind, id) in items {
        let f = first.entry(id).or_insert_with(|| path.clone()).clone();
        out.insert(path, (kind, f));
    }
    out
}

async fn store_tree(
    store: &MetaStore,
    view: View,
    root: NodeId,
) -> BTreeMap<Vec<String>, (NodeKind, Vec<String>)> {
    let mut items = vec![(vec![], NodeKind::Directory, root.0)];
    let mut stack = vec![(vec![], root)];
    while let Some((path, dir)) = stack.pop() {
        let mut after: Option<Name> = None;
        loop {
            // Small pages exercise the keyset pagination too.
            let page = store
                .readdir(view, dir, after.as_ref(), 2)
                .await
                .expect("readdir");
            if page.is_empty() {
                break;
            }
            for e in &page {
                let mut p = path.clone();
                p.push(e.name.to_string_lossy());
                items.push((p.clone(), e.kind, e.ino.0));
                if e.kind == NodeKind::Directory {
                    stack.push((p, e.ino));
                }
            }
            after = page.last().map(|e| e.name.clone());
        }
    }
    canonicalize(items)
}

fn kind_of(r: Result<impl Sized, drive::MetaError>) -> Outcome {
    r.map(|_| ()).map_err(|e| e.kind())
}

struct Harness {
    store: MetaStore,
    ws: Workspace,
    model: Model,
    /// model id -> store node id
    ids: BTreeMap<u64, NodeId>,
    snapshots: Vec<(String, Model)>,
    snap_counter: u32,
}

impl Harness {
    fn node(&self, model_id: u64) -> NodeId {
        self.ids[&model_id]
    }

    /// Learns store ids for model nodes by walking both trees by path.
    async fn sync_ids(&mut self) {
        for (path, id) in self.model.paths() {
            if self.ids.contains_key(&id) {
                continue;
            }
            let p = path.join("/");
            let attr = self
                .store
                .resolve(self.ws.id, &p)
                .await
                .expect("resolve model path in store");
            self.ids.insert(id, attr.ino);
        }
    }

    async fn apply(&mut self, op: &Op) {
        let a = actor();
        let ws = self.ws.id;
        let dirs = self.model.dirs();
        let pick = |v: &Vec<u64>, i: usize| v[i % v.len()];
        let (expected, got) = match op {
            Op::Create { dir, name, kind } => {
                let d = pick(&dirs, *dir);
                let (k, node) = match kind {
                    0 | 3 => (NodeKind::Directory, NewNode::new(NodeKind::Directory, 0o755)),
                    2 => (
                        NodeKind::Symlink,
                        NewNode {
                            symlink_target: Some(b"target".to_vec()),
                            ..NewNode::new(NodeKind::Symlink, 0o777)
                        },
                    ),
                    _ => (NodeKind::File, NewNode::new(NodeKind::File, 0o644)),
                };
                let n = NAMES[*name];
                let e = self.model.create(d, n, k);
                (
                    e,
                    kind_of(
                        self.store
                            .create(&a, ws, self.node(d), &Name::parse(n).unwrap(), &node)
                            .await,
                    ),
                )
            }
            Op::Link { file, dir, name } => {
                let files = self.model.files();
                if files.is_empty() {
                    return;
                }
                let (f, d, n) = (pick(&files, *file), pick(&dirs, *dir), NAMES[*name]);
                let e = self.model.link(f, d, n);
                (
                    e,
                    kind_of(
                        self.store
                            .link(&a, ws, self.node(f), self.node(d), &Name::parse(n).unwrap())
                            .await,
                    ),
                )
            }
            Op::Unlink { dir, name } | Op::Rmdir { dir, name } => {
                let d = pick(&dirs, *dir);
                let n = NAMES[*name];
                let rmdir = matches!(op, Op::Rmdir { .. });
                let e = self.model.remove(d, n, rmdir);
                let nm = Name::parse(n).unwrap();
                let g = if rmdir {
                    self.store.rmdir(&a, ws, self.node(d), &nm).await
                } else {
                    self.store.unlink(&a, ws, self.node(d), &nm).await
                };
                (e, kind_of(g))
            }
            Op::Rename {
                sdir,
                sname,
                ddir,
                dname,
                mode,
            } => {
                let (sd, dd) = (pick(&dirs, *sdir), pick(&dirs, *ddir));
                let (sn, dn) = (NAMES[*sname], NAMES[*dname]);
                let mode = [RenameMode::Replace, RenameMode::NoReplace, RenameMode::Exchange][*mode as usize];
                let e = self.model.rename(sd, sn, dd, dn, mode);
                let g = self
                    .store
                    .rename(
                        &a,
                        ws,
                        self.node(sd),
                        &Name::parse(sn).unwrap(),
                        self.node(dd),
                        &Name::parse(dn).unwrap(),
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
                let all: Vec<u64> = self.model.paths().into_iter().skip(1).map(|(_, id)| id).collect();
                if all.is_empty() {
                    return;
                }
                let (s, dd, dn) = (pick(&all, *src), pick(&dirs, *ddir), NAMES[*dname]);
                let merge = [MergeMode::Fail, MergeMode::Overwrite, MergeMode::Skip][*merge as usize];
                let e = self.model.copy(s, dd, dn, merge);
                let g = self
                    .store
                    .copy(
                        &a,
                        ws,
                        View::Live,
                        self.node(s),
                        self.node(dd),
                        &Name::parse(dn).unwrap(),
                        merge,
                    )
                    .await;
                (e, kind_of(g))
            }
            Op::DeletePath { node } => {
                let paths: Vec<(Vec<String>, u64)> = self.model.paths().into_iter().skip(1).collect();
                if paths.is_empty() {
                    return;
                }
                let (path, _) = paths[node % paths.len()].clone();
                let parent_path = &path[..path.len() - 1];
                let parent = self
                    .model
                    .paths()
                    .into_iter()
                    .find(|(p, _)| p == parent_path)
                    .unwrap()
                    .1;
                let e = self.model.delete_subtree(parent, path.last().unwrap());
                (e, kind_of(self.store.delete_path(&a, ws, &path.join("/")).await))
            }
            Op::Snapshot => {
                self.snap_counter += 1;
                let name = format!("s{}", self.snap_counter);
                let g = kind_of(self.store.create_snapshot(&a, ws, &name, "/").await);
                self.snapshots.push((name, self.model.clone()));
                (Ok(()), g)
            }
            Op::DeleteSnapshot { idx } => {
                if self.snapshots.is_empty() {
                    return;
                }
                let (name, _) = self.snapshots.remove(idx % self.snapshots.len());
                (Ok(()), kind_of(self.store.delete_snapshot(&a, ws, &name).await))
            }
        };
        if std::env::var_os("MODEL_TRACE").is_some() {
            eprintln!("{op:?} -> {got:?} (model {expected:?})");
        }
        assert_eq!(got, expected, "outcome of {op:?}");
        self.sync_ids().await;
    }

    async fn check(&self) {
        let live = store_tree(&self.store, View::Live, self.ws.root).await;
        assert_eq!(live, self.model.canonical(), "live tree");
        for (name, model) in &self.snapshots {
            let snap = self
                .store
                .get_snapshot(self.ws.id, name)
                .await
                .expect("snapshot exists");
            let tree = store_tree(&self.store, View::At(snap.epoch), snap.root).await;
            assert_eq!(tree, model.canonical(), "snapshot {name}");
        }
    }
}

fn run_model_cases(seed_name: &'static str, cases: u32) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = rt.block_on(store());
    let counter = std::sync::atomic::AtomicU32::new(0);
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(ops in proptest::collection::vec(op_strategy(), 1..48))| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        rt.block_on(async {
            let ws = workspace(&store, &format!("{seed_name}-{n}"), WorkspaceKind::User).await;
            let mut ids = BTreeMap::new();
            ids.insert(0, ws.root);
            let mut h = Harness { store: store.clone(), ws, model: Model::new(), ids, snapshots: Vec::new(), snap_counter: 0 };
            for op in &ops {
                h.apply(op).await;
                h.check().await;
            }
        });
    });
    eprintln!("ran {} cases", counter.load(std::sync::atomic::Ordering::Relaxed));
}

#[test]
fn store_matches_reference_model_part_1() {
    run_model_cases("model-a", 250);
}

#[test]
fn store_matches_reference_model_part_2() {
    run_model_cases("model-b", 250);
}
