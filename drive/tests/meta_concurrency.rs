//! Races against real PostgreSQL: SERIALIZABLE transactions with retry must leave exactly one
//! winner and never a cycle; keyset readdir pages, snapshots taken while writers commit, and the
//! incrementally kept frame-sequence summaries stay exact under interleaved mutations.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use drive::model::*;
use drive::{ErrorKind, PgMetaStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tasks_creating_one_name_have_exactly_one_winner() {
    let store = store().await;
    let ws = workspace(&store, "race-create", WorkspaceKind::User).await;
    let mut tasks = Vec::new();
    for i in 0..16u32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let node = NewNode::new(NodeKind::File, 0o644).owned_by(i, i);
            store
                .create(&actor(), ws.id, ws.root, &name("render.exr"), &node)
                .await
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(attr) => winners.push(attr),
            Err(e) => assert_eq!(e.kind(), ErrorKind::Exists, "loser error: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one create wins");
    let listed = store.readdir(View::Live, ws.root, None, 100).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].ino, winners[0].ino);
    let got = store
        .lookup(View::Live, ws.root, &name("render.exr"))
        .await
        .unwrap();
    assert_eq!(got.uid, winners[0].uid, "the stored node is the winner's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tasks_renaming_onto_one_name_keep_the_unique_path_invariant() {
    let store = store().await;
    let ws = workspace(&store, "race-rename", WorkspaceKind::User).await;
    let mut sources = Vec::new();
    for i in 0..12 {
        let a = store
            .create(
                &actor(),
                ws.id,
                ws.root,
                &name(&format!("tmp{i}")),
                &NewNode::new(NodeKind::File, 0o644),
            )
            .await
            .unwrap();
        sources.push((i, a.ino));
    }
    let mut tasks = Vec::new();
    for (i, _) in &sources {
        let store = store.clone();
        let i = *i;
        tasks.push(tokio::spawn(async move {
            store
                .rename(
                    &actor(),
                    ws.id,
                    ws.root,
                    &name(&format!("tmp{i}")),
                    ws.root,
                    &name("final"),
                    RenameMode::NoReplace,
                )
                .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(e) => assert_eq!(e.kind(), ErrorKind::Exists, "loser error: {e}"),
        }
    }
    assert_eq!(ok, 1, "exactly one NOREPLACE rename wins");
    let listed = store.readdir(View::Live, ws.root, None, 100).await.unwrap();
    let finals: Vec<_> = listed.iter().filter(|e| e.name.as_bytes() == b"final").collect();
    assert_eq!(finals.len(), 1);
    assert_eq!(listed.len(), 12, "11 sources remain plus the one renamed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rename_cycle_race_never_creates_a_loop() {
    let store = store().await;
    let ws = workspace(&store, "race-cycle", WorkspaceKind::User).await;
    for round in 0..10 {
        let a_name = name(&format!("a{round}"));
        let b_name = name(&format!("b{round}"));
        let a = store
            .create(
                &actor(),
                ws.id,
                ws.root,
                &a_name,
                &NewNode::new(NodeKind::Directory, 0o755),
            )
            .await
            .unwrap();
        let b = store
            .create(
                &actor(),
                ws.id,
                ws.root,
                &b_name,
                &NewNode::new(NodeKind::Directory, 0o755),
            )
            .await
            .unwrap();
        let (s1, s2) = (store.clone(), store.clone());
        let (an, bn, an2, bn2) = (a_name.clone(), b_name.clone(), a_name.clone(), b_name.clone());
        let t1 = tokio::spawn(async move {
            s1.rename(&actor(), ws.id, ws.root, &an, b.ino, &an2, RenameMode::Replace)
                .await
        });
        let t2 = tokio::spawn(async move {
            s2.rename(&actor(), ws.id, ws.root, &bn, a.ino, &bn2, RenameMode::Replace)
                .await
        });
        let r1 = t1.await.unwrap();
        let r2 = t2.await.unwrap();
        let oks = [r1.is_ok(), r2.is_ok()].iter().filter(|x| **x).count();
        assert_eq!(
            oks, 1,
            "exactly one of the crossing moves succeeds: {r1:?} {r2:?}"
        );
        for r in [r1, r2] {
            if let Err(e) = r {
                assert_eq!(
                    e.kind(),
                    ErrorKind::InvalidArgument,
                    "the loser sees the cycle: {e}"
                );
            }
        }
        // Both directories remain reachable from the root: no detached loop.
        let mut reachable = 0;
        let mut stack = vec![ws.root];
        while let Some(d) = stack.pop() {
            for e in store.readdir(View::Live, d, None, 1000).await.unwrap() {
                if e.ino == a.ino || e.ino == b.ino {
                    reachable += 1;
                }
                if e.kind == NodeKind::Directory {
                    stack.push(e.ino);
                }
            }
        }
        assert_eq!(
            reachable, 2,
            "round {round}: both folders reachable from the root"
        );
    }
}

fn file() -> NewNode {
    NewNode::new(NodeKind::File, 0o644)
}

fn folder() -> NewNode {
    NewNode::new(NodeKind::Directory, 0o755)
}

async fn mkdir(store: &PgMetaStore, ws: &Workspace, parent: NodeId, n: &str) -> NodeId {
    store
        .create(&actor(), ws.id, parent, &name(n), &folder())
        .await
        .unwrap()
        .ino
}

async fn touch(store: &PgMetaStore, ws: &Workspace, parent: NodeId, n: &str) -> NodeId {
    store
        .create(&actor(), ws.id, parent, &name(n), &file())
        .await
        .unwrap()
        .ino
}

/// Every entry of `dir` in `view`, read in keyset pages.
async fn list(store: &PgMetaStore, view: View, dir: NodeId) -> Vec<DirEntry> {
    let mut out: Vec<DirEntry> = Vec::new();
    loop {
        let page = store
            .readdir(view, dir, out.last().map(|e| &e.name), 1000)
            .await
            .unwrap();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

async fn names_in(store: &PgMetaStore, view: View, dir: NodeId) -> Vec<String> {
    list(store, view, dir)
        .await
        .iter()
        .map(|e| e.name.to_string_lossy())
        .collect()
}

/// The frame number part of the test's listing names ("e015", "e016a", ...).
fn listing_number(n: &str) -> Option<u32> {
    n.strip_prefix('e')?.get(..3)?.parse().ok()
}

// Catches OFFSET pagination (and any cursor that counts positions instead of comparing names):
// names inserted before the cursor make an offset repeat an entry, deletions before it make it
// skip one.
#[tokio::test]
async fn readdir_keyset_pages_survive_inserts_and_deletes_on_both_sides_of_the_cursor() {
    let store = store().await;
    let ws = workspace(&store, "readdir-keyset", WorkspaceKind::User).await;
    let dir = mkdir(&store, &ws, ws.root, "listing").await;
    let initial: BTreeSet<String> = (0..20).map(|i| format!("e{:03}", i * 5)).collect();
    for n in &initial {
        touch(&store, &ws, dir, n).await;
    }
    let a = actor();
    // The model of the folder, and what happened to each name relative to the cursor.
    let mut live = initial.clone();
    let mut deleted = BTreeSet::new();
    let mut deleted_unreached = BTreeSet::new();
    let mut inserted_before = BTreeSet::new();
    let mut inserted_after = BTreeSet::new();
    // What keyset pagination over the model returns, page by page.
    let mut expected: Vec<String> = Vec::new();
    let mut returned: Vec<String> = Vec::new();
    let mut cursor: Option<Name> = None;
    for page_no in 0..100 {
        let after = cursor.as_ref().map(Name::to_string_lossy);
        expected.extend(
            live.iter()
                .filter(|n| after.as_ref().is_none_or(|c| *n > c))
                .take(4)
                .cloned(),
        );
        let page = store.readdir(View::Live, dir, cursor.as_ref(), 4).await.unwrap();
        let Some(last) = page.last() else { break };
        cursor = Some(last.name.clone());
        let page: Vec<String> = page.iter().map(|e| e.name.to_string_lossy()).collect();
        returned.extend(page.iter().cloned());
        let c = cursor.as_ref().unwrap().to_string_lossy();
        let Some(k) = listing_number(&c) else { continue };
        // On even pages insert before the cursor (one name before everything, one between
        // returned entries) and delete one returned entry: an offset would repeat an entry.
        // On odd pages delete two returned entries: an offset would skip one.
        let even = page_no % 2 == 0;
        let before = if even {
            vec![format!("a{page_no:02}"), format!("e{:03}b", k.saturating_sub(1))]
        } else {
            vec![]
        };
        for n in before {
            if live.insert(n.clone()) {
                touch(&store, &ws, dir, &n).await;
                inserted_before.insert(n);
            }
        }
        // Insert after the cursor: one on the next page, one at the end.
        for n in [format!("e{:03}a", k + 1), format!("z{page_no:02}")] {
            if live.insert(n.clone()) {
                touch(&store, &ws, dir, &n).await;
                inserted_after.insert(n);
            }
        }
        // Delete entries already returned on this page.
        for gone in page.iter().take(if even { 1 } else { 2 }) {
            store.unlink(&a, ws.id, dir, &name(gone)).await.unwrap();
            live.remove(gone);
            deleted.insert(gone.clone());
        }
        // Delete the second live entry after the cursor (not one inserted just now).
        let ahead = live
            .iter()
            .filter(|n| **n > c && !inserted_after.contains(*n))
            .nth(1)
            .cloned();
        if let Some(gone) = ahead {
            store.unlink(&a, ws.id, dir, &name(&gone)).await.unwrap();
            live.remove(&gone);
            deleted_unreached.insert(gone.clone());
            deleted.insert(gone);
        }
    }
    assert!(!deleted_unreached.is_empty() && !inserted_before.is_empty());
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &returned {
        *counts.entry(n.as_str()).or_default() += 1;
    }
    let repeated: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).map(|(n, _)| *n).collect();
    let throughout: Vec<&String> = initial.iter().filter(|n| !deleted.contains(*n)).collect();
    let missing: Vec<_> = throughout.iter().filter(|n| !returned.contains(n)).collect();
    assert!(
        repeated.is_empty() && missing.is_empty(),
        "entries returned twice: {repeated:?}; entries that existed throughout but were skipped: {missing:?}"
    );
    assert!(
        returned.windows(2).all(|w| w[0] < w[1]),
        "pages are in name order: {returned:?}"
    );
    let resurrected: Vec<_> = deleted_unreached
        .iter()
        .filter(|n| returned.contains(n))
        .collect();
    assert!(
        resurrected.is_empty(),
        "entries deleted before being reached were returned: {resurrected:?}"
    );
    let later: Vec<_> = inserted_after
        .iter()
        .filter(|n| !deleted_unreached.contains(*n) && !returned.contains(n))
        .collect();
    assert!(
        later.is_empty(),
        "names inserted after the cursor were not returned: {later:?}"
    );
    let behind: Vec<_> = inserted_before.iter().filter(|n| returned.contains(n)).collect();
    assert!(
        behind.is_empty(),
        "names inserted behind the cursor were returned: {behind:?}"
    );
    assert_eq!(
        returned, expected,
        "exactly the keyset pages of the folder's history"
    );
}

/// Completed-operation counters of the snapshot test's tasks.
type Progress = Arc<Vec<AtomicUsize>>;

fn read_progress(p: &Progress) -> Vec<usize> {
    p.iter().map(|c| c.load(Ordering::SeqCst)).collect()
}

const SNAP_WRITERS: usize = 3;
const SNAP_OPS: usize = 30;
const MOVERS: usize = 4;

// Catches a torn snapshot (parts of the tree read at two epochs, or rows closed at the snapshot
// epoch still counted as visible): a moved file would show in both folders or in neither, a
// writer's files would not be a prefix. Also catches a snapshot that reads a later epoch than
// the one it was taken at (its view would hold creates that completed after it returned).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshots_taken_while_mutations_commit_are_consistent_states() {
    let store = store().await;
    let ws = workspace(&store, "snap-race", WorkspaceKind::User).await;
    let mut writer_dirs = Vec::new();
    for w in 0..SNAP_WRITERS {
        writer_dirs.push(mkdir(&store, &ws, ws.root, &format!("w{w}")).await);
    }
    let left = mkdir(&store, &ws, ws.root, "left").await;
    let right = mkdir(&store, &ws, ws.root, "right").await;
    let doomed = mkdir(&store, &ws, ws.root, "doomed").await;
    for p in 0..MOVERS {
        touch(&store, &ws, left, &format!("p{p}")).await;
    }
    let swap_a = touch(&store, &ws, left, "swap-a").await;
    let swap_b = touch(&store, &ws, right, "swap-b").await;
    for u in 0..SNAP_OPS {
        touch(&store, &ws, doomed, &format!("u{u:03}")).await;
    }
    // Counters: writers 0..SNAP_WRITERS, then the unlinker.
    let progress: Progress = Arc::new((0..=SNAP_WRITERS).map(|_| AtomicUsize::new(0)).collect());
    let mut tasks = Vec::new();
    for (w, dir) in writer_dirs.iter().copied().enumerate() {
        let (store, progress) = (store.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..SNAP_OPS {
                store
                    .create(&actor(), ws.id, dir, &name(&format!("f{i:03}")), &file())
                    .await
                    .unwrap();
                progress[w].store(i + 1, Ordering::SeqCst);
            }
        }));
    }
    {
        let (store, progress) = (store.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..SNAP_OPS {
                store
                    .unlink(&actor(), ws.id, doomed, &name(&format!("u{i:03}")))
                    .await
                    .unwrap();
                progress[SNAP_WRITERS].store(i + 1, Ordering::SeqCst);
            }
        }));
    }
    {
        // Moves p0..p3 back and forth between left and right, one rename each.
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut in_left = [true; MOVERS];
            for i in 0..40 {
                let p = i % MOVERS;
                let (from, to) = if in_left[p] { (left, right) } else { (right, left) };
                let n = name(&format!("p{p}"));
                store
                    .rename(&actor(), ws.id, from, &n, to, &n, RenameMode::NoReplace)
                    .await
                    .unwrap();
                in_left[p] = !in_left[p];
            }
        }));
    }
    {
        // Swaps the nodes of left/swap-a and right/swap-b atomically.
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..20 {
                store
                    .rename(
                        &actor(),
                        ws.id,
                        left,
                        &name("swap-a"),
                        right,
                        &name("swap-b"),
                        RenameMode::Exchange,
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    let mut snaps: Vec<(Snapshot, Vec<usize>, Vec<usize>)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for s in 0..10 {
        // Space the snapshots out so that a view read at the next epoch would differ.
        let floor = snaps.last().map_or(0, |(_, _, hi)| hi[0]) + 3;
        while progress[0].load(Ordering::SeqCst) < floor.min(SNAP_OPS) {
            assert!(Instant::now() < deadline, "writer 0 made no progress");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let lo = read_progress(&progress);
        let snap = store
            .create_snapshot(&actor(), ws.id, &format!("s{s}"), "/")
            .await
            .unwrap();
        let hi = read_progress(&progress);
        snaps.push((snap, lo, hi));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(snaps.windows(2).all(|w| w[0].0.epoch < w[1].0.epoch));
    let mut previous: Option<Vec<usize>> = None;
    for (snap, lo, hi) in &snaps {
        let view = View::At(snap.epoch);
        let top = list(&store, view, snap.root).await;
        let top_names: Vec<String> = top.iter().map(|e| e.name.to_string_lossy()).collect();
        assert_eq!(
            top_names,
            ["doomed", "left", "right", "w0", "w1", "w2"],
            "{}",
            snap.name
        );
        // Each writer's files are a prefix f000..f(k-1) of what it created, with k between the
        // creates completed before the snapshot started and those completed after it returned
        // (plus one that committed before the snapshot but whose task had not yet counted it).
        let mut counts = Vec::new();
        for (w, dir) in writer_dirs.iter().enumerate() {
            let got = names_in(&store, view, *dir).await;
            let k = got.len();
            let prefix: Vec<String> = (0..k).map(|i| format!("f{i:03}")).collect();
            assert_eq!(got, prefix, "{}: w{w} is not a prefix of its creates", snap.name);
            assert!(
                lo[w] <= k && k <= hi[w] + 1,
                "{}: w{w} holds {k} files, but {} had completed before the snapshot and {} after it",
                snap.name,
                lo[w],
                hi[w]
            );
            counts.push(k);
        }
        // The unlinker's files are a suffix u(r)..u029.
        let got = names_in(&store, view, doomed).await;
        let r = SNAP_OPS - got.len();
        let suffix: Vec<String> = (r..SNAP_OPS).map(|i| format!("u{i:03}")).collect();
        assert_eq!(got, suffix, "{}: doomed is not a suffix of its files", snap.name);
        let u = SNAP_WRITERS;
        assert!(
            lo[u] <= r && r <= hi[u] + 1,
            "{}: {r} files unlinked, but {} had completed before the snapshot and {} after it",
            snap.name,
            lo[u],
            hi[u]
        );
        counts.push(r);
        // Each moved file is in exactly one of the two folders; the swapped pair names two
        // distinct nodes.
        let l = list(&store, view, left).await;
        let rt = list(&store, view, right).await;
        for p in 0..MOVERS {
            let n = format!("p{p}");
            let places = l
                .iter()
                .chain(&rt)
                .filter(|e| e.name.to_string_lossy() == n)
                .count();
            assert_eq!(places, 1, "{}: {n} is in {places} of left/right", snap.name);
        }
        let a = l.iter().find(|e| e.name.as_bytes() == b"swap-a").map(|e| e.ino);
        let b = rt.iter().find(|e| e.name.as_bytes() == b"swap-b").map(|e| e.ino);
        assert!(
            (a, b) == (Some(swap_a), Some(swap_b)) || (a, b) == (Some(swap_b), Some(swap_a)),
            "{}: the exchanged pair reads {a:?} {b:?}",
            snap.name
        );
        assert_eq!(l.len() + rt.len(), MOVERS + 2, "{}: left+right", snap.name);
        // A later snapshot never shows less progress than an earlier one.
        if let Some(prev) = &previous {
            assert!(
                prev.iter().zip(&counts).all(|(a, b)| a <= b),
                "{}: progress went backwards: {prev:?} then {counts:?}",
                snap.name
            );
        }
        previous = Some(counts);
    }
}

// Catches (found by this test, fixed with it): a mutation reads the workspace epoch E, a
// snapshot at E commits, then the mutation commits its rows at epoch E. Under SERIALIZABLE
// that is a valid order (mutation first), but the snapshot's view changed after it was
// returned: the unlinked file vanished from a snapshot that showed it.
#[tokio::test]
async fn snapshot_view_does_not_change_after_it_was_taken() {
    let (store, url) = store_and_url().await;
    let ws = workspace(&store, "snap-late", WorkspaceKind::User).await;
    let dir = mkdir(&store, &ws, ws.root, "d").await;
    touch(&store, &ws, dir, "keep").await;
    touch(&store, &ws, dir, "victim").await;
    // Hold a row lock on the folder's inode so that the unlink stops after its reads.
    let blocker = raw_client(&url).await;
    blocker.batch_execute("BEGIN").await.unwrap();
    blocker
        .query(
            "SELECT 1 FROM inodes WHERE ino = $1 AND valid_to IS NULL FOR UPDATE",
            &[&(dir.0 as i64)],
        )
        .await
        .unwrap();
    let unlink = {
        let store = store.clone();
        tokio::spawn(async move { store.unlink(&actor(), ws.id, dir, &name("victim")).await })
    };
    let watcher = raw_client(&url).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the unlink never reached the lock");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The snapshot waits for the mutation in flight (or orders itself before it for good):
    // whatever it shows when it returns, it shows for ever.
    let snapshot = {
        let store = store.clone();
        tokio::spawn(async move { store.create_snapshot(&actor(), ws.id, "s", "/").await })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting >= 2 || snapshot.is_finished() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the snapshot neither waited nor finished"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    blocker.batch_execute("ROLLBACK").await.unwrap();
    let snap = snapshot.await.unwrap().unwrap();
    let seen = names_in(&store, View::At(snap.epoch), dir).await;
    unlink.await.unwrap().unwrap();
    assert_eq!(
        names_in(&store, View::At(snap.epoch), dir).await,
        seen,
        "the snapshot's view changed after it was taken"
    );
    assert_eq!(seen, ["keep"], "the snapshot waited for the unlink in flight");
    assert_eq!(names_in(&store, View::Live, dir).await, ["keep"]);
}

/// A sequence: (prefix, padding, suffix).
type SeqKey = (Vec<u8>, u32, Vec<u8>);

/// A sequence summary: each sequence with its inclusive frame runs, in key order.
type Summary = Vec<(SeqKey, Vec<(i64, i64)>)>;

/// The test's own reading of a frame name, written independently of drive's parser: the last
/// run of decimal digits (at most 18) is the frame number when what follows it is empty or
/// starts with '.'; the text before it, the digit count and the text after it name the sequence.
fn naive_frame(n: &[u8]) -> Option<(SeqKey, i64)> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < n.len() {
        if n[i].is_ascii_digit() {
            let start = i;
            while i < n.len() && n[i].is_ascii_digit() {
                i += 1;
            }
            runs.push((start, i));
        } else {
            i += 1;
        }
    }
    let &(start, end) = runs.last()?;
    let suffix = &n[end..];
    if suffix.first().is_some_and(|b| *b != b'.') || end - start > 18 {
        return None;
    }
    let frame = n[start..end]
        .iter()
        .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'));
    Some((
        (n[..start].to_vec(), (end - start) as u32, suffix.to_vec()),
        frame,
    ))
}

/// Brute-force summary: group by sequence, sort the frames, collapse consecutive ones.
fn naive_summary(names: &[String]) -> Summary {
    let mut by_key: BTreeMap<SeqKey, BTreeSet<i64>> = BTreeMap::new();
    for n in names {
        if let Some((key, frame)) = naive_frame(n.as_bytes()) {
            by_key.entry(key).or_default().insert(frame);
        }
    }
    by_key
        .into_iter()
        .map(|(key, frames)| {
            let mut runs: Vec<(i64, i64)> = Vec::new();
            for f in frames {
                match runs.last_mut() {
                    Some(run) if run.1 + 1 == f => run.1 = f,
                    _ => runs.push((f, f)),
                }
            }
            (key, runs)
        })
        .collect()
}

fn render(summary: &Summary) -> Vec<String> {
    summary
        .iter()
        .map(|((prefix, padding, suffix), runs)| {
            let runs: Vec<String> = runs
                .iter()
                .map(|(a, b)| {
                    if a == b {
                        format!("{a}")
                    } else {
                        format!("{a}-{b}")
                    }
                })
                .collect();
            format!(
                "{}%0{padding}d{} [{}]",
                String::from_utf8_lossy(prefix),
                String::from_utf8_lossy(suffix),
                runs.join(",")
            )
        })
        .collect()
}

fn store_summary(seqs: &[FrameSequence]) -> Summary {
    seqs.iter()
        .map(|s| {
            (
                (s.key.prefix.clone(), s.key.padding, s.key.suffix.clone()),
                s.ranges.iter().map(|r| (r.first, r.last)).collect(),
            )
        })
        .collect()
}

/// Checks the store's summary of `dir` against the naive one of its regular files (folders
/// and symlinks are never frames) and returns the rendered summary.
async fn check_summary(store: &PgMetaStore, dir: NodeId, when: &str) -> Vec<String> {
    let files: Vec<String> = list(store, View::Live, dir)
        .await
        .iter()
        .filter(|e| e.kind == NodeKind::File)
        .map(|e| e.name.to_string_lossy())
        .collect();
    let oracle = naive_summary(&files);
    let got = store_summary(&store.sequences(dir).await.unwrap());
    assert_eq!(
        render(&got),
        render(&oracle),
        "{when}: the store's summary differs from the naive one"
    );
    assert_eq!(got, oracle, "{when}");
    render(&oracle)
}

async fn mv(store: &PgMetaStore, ws: &Workspace, from: (NodeId, &str), to: (NodeId, &str), mode: RenameMode) {
    store
        .rename(&actor(), ws.id, from.0, &name(from.1), to.0, &name(to.1), mode)
        .await
        .unwrap();
}

// Catches summaries that miss a change kind (unlink, unlink_many, rename in, out or within a
// folder, replace, exchange, link, copy), that mix paddings or suffixes, that count folders or
// symlinks as frames, or that fold pending changes wrongly when read several times.
#[tokio::test]
async fn frame_sequence_summary_matches_a_naive_oracle_through_creates_unlinks_and_renames() {
    let store = store().await;
    let ws = workspace(&store, "seq-oracle", WorkspaceKind::User).await;
    let a = actor();
    let plates = mkdir(&store, &ws, ws.root, "plates").await;
    let elsewhere = mkdir(&store, &ws, ws.root, "elsewhere").await;
    let mut names: Vec<String> = [0, 9999, 20, 999, 1000]
        .into_iter()
        .chain(1..=12)
        .chain(22..=25)
        .map(|f| format!("shot.{f:04}.exr"))
        .collect();
    names.extend(
        [
            "shot.999.exr",
            "shot.998.exr",
            "shot.10000.exr",
            "big.999999999999999997.exr",
            "big.999999999999999998.exr",
            "big.999999999999999999.exr",
            "big.1000000000000000000.exr",
            "neg.-0005.exr",
            "neg.-0004.exr",
            "neg.0004.exr",
            "render_0007",
            "render_0008",
            "cache.0001.tar.gz",
            "clip.0001.mp4",
            "notes.txt",
            "v2x",
            "README",
        ]
        .map(String::from),
    );
    for n in &names {
        touch(&store, &ws, plates, n).await;
    }
    mkdir(&store, &ws, plates, "shot.0013.exr").await;
    let mut link = NewNode::new(NodeKind::Symlink, 0o777);
    link.symlink_target = Some(b"shot.0001.exr".to_vec());
    store
        .create(&a, ws.id, plates, &name("shot.0014.exr"), &link)
        .await
        .unwrap();
    let first = store
        .lookup(View::Live, plates, &name("shot.0001.exr"))
        .await
        .unwrap();
    store
        .link(&a, ws.id, first.ino, plates, &name("shot.0030.exr"))
        .await
        .unwrap();
    let text = check_summary(&store, plates, "after creates").await;
    assert!(
        text.contains(&"shot.%04d.exr [0-12,20,22-25,30,999-1000,9999]".to_string()),
        "{text:?}"
    );
    assert!(
        text.contains(&"big.%018d.exr [999999999999999997-999999999999999999]".to_string()),
        "{text:?}"
    );

    for n in ["shot.0005.exr", "shot.0022.exr", "shot.0000.exr", "shot.999.exr"] {
        store.unlink(&a, ws.id, plates, &name(n)).await.unwrap();
    }
    let mut batch = Vec::new();
    for n in ["shot.0010.exr", "render_0007"] {
        let ino = store.lookup(View::Live, plates, &name(n)).await.unwrap().ino;
        batch.push(drive::meta::QueuedUnlink {
            parent: plates,
            name: name(n),
            ino,
            actor: a.clone(),
        });
    }
    for outcome in store.unlink_many(ws.id, &batch).await.unwrap() {
        outcome.unwrap();
    }
    let r = RenameMode::Replace;
    mv(
        &store,
        &ws,
        (plates, "shot.0012.exr"),
        (plates, "shot.0012.exr.bak"),
        r,
    )
    .await;
    mv(
        &store,
        &ws,
        (plates, "shot.0020.exr"),
        (plates, "shot.0021.exr"),
        r,
    )
    .await;
    mv(
        &store,
        &ws,
        (plates, "shot.0011.exr"),
        (elsewhere, "shot.0011.exr"),
        r,
    )
    .await;
    touch(&store, &ws, elsewhere, "shot.0040.exr").await;
    mv(
        &store,
        &ws,
        (elsewhere, "shot.0040.exr"),
        (plates, "shot.0040.exr"),
        r,
    )
    .await;
    touch(&store, &ws, elsewhere, "foo.txt").await;
    mv(&store, &ws, (elsewhere, "foo.txt"), (plates, "shot.0041.exr"), r).await;
    mv(
        &store,
        &ws,
        (plates, "shot.0003.exr"),
        (plates, "shot.0004.exr"),
        r,
    )
    .await;
    mkdir(&store, &ws, elsewhere, "sub").await;
    mv(
        &store,
        &ws,
        (plates, "shot.0006.exr"),
        (elsewhere, "sub"),
        RenameMode::Exchange,
    )
    .await;
    mkdir(&store, &ws, elsewhere, "shot.0050.exr").await;
    mv(
        &store,
        &ws,
        (elsewhere, "shot.0050.exr"),
        (plates, "shot.0050.exr"),
        r,
    )
    .await;
    // The hard link's frame 30 moves to another sequence (notes-%02d.txt).
    mv(
        &store,
        &ws,
        (plates, "shot.0030.exr"),
        (plates, "notes-30.txt"),
        r,
    )
    .await;
    let moved_out = store
        .lookup(View::Live, elsewhere, &name("shot.0011.exr"))
        .await
        .unwrap();
    store
        .copy(
            &a,
            ws.id,
            View::Live,
            moved_out.ino,
            plates,
            &name("shot.0042.exr"),
            MergeMode::Fail,
        )
        .await
        .unwrap();
    check_summary(&store, plates, "after unlinks and renames").await;
    let text = check_summary(&store, elsewhere, "elsewhere").await;
    assert_eq!(text, ["shot.%04d.exr [11]"], "a file named `sub` is no frame");

    mv(
        &store,
        &ws,
        (elsewhere, "shot.0011.exr"),
        (plates, "shot.0011.exr"),
        r,
    )
    .await;
    store
        .unlink(&a, ws.id, plates, &name("big.999999999999999998.exr"))
        .await
        .unwrap();
    store
        .unlink(&a, ws.id, plates, &name("shot.10000.exr"))
        .await
        .unwrap();
    check_summary(&store, plates, "after moving back").await;
    let text = check_summary(&store, plates, "read again").await;
    assert!(
        text.contains(&"shot.%04d.exr [1-2,4,7-9,11,21,23-25,40-42,999-1000,9999]".to_string()),
        "{text:?}"
    );
    assert!(!text.iter().any(|t| t.starts_with("shot.%05d")), "{text:?}");
    assert_eq!(
        check_summary(&store, elsewhere, "elsewhere at the end").await,
        Vec::<String>::new()
    );
}

/// Waits until `dir/n` exists.
async fn wait_for(store: &PgMetaStore, dir: NodeId, n: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while store.lookup(View::Live, dir, &name(n)).await.is_err() {
        assert!(Instant::now() < deadline, "{n} never appeared");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// Catches summaries that lose or double-fold changes under concurrency: changes appended by
// concurrent creators and removers while other tasks fold them (summary reads), and creators
// racing for the same frame, must add up to exactly the folder's final frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_frame_creators_keep_the_sequence_summary_exact() {
    let store = store().await;
    let ws = workspace(&store, "seq-race", WorkspaceKind::User).await;
    let dir = mkdir(&store, &ws, ws.root, "seq").await;
    let frame = |f: i64| format!("shot.{f:04}.exr");
    // Creators: overlapping (1-40 and 30-70), disjoint (100-130), one that deletes every
    // third of its own frames (200-240), and one with other sequences (other padding/suffix).
    let plans: Vec<Vec<String>> = vec![
        (1..=40).map(frame).collect(),
        (30..=70).rev().map(frame).collect(),
        (100..=130).map(frame).collect(),
        (200..=240).map(frame).collect(),
        (1..=25)
            .map(|f| format!("plate.{f:03}.dpx"))
            .chain((1..=10).map(|f| format!("shot.{f:05}.exr")))
            .collect(),
    ];
    let ever: BTreeSet<String> = plans.iter().flatten().cloned().collect();
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (t, plan) in plans.into_iter().enumerate() {
        let (store, done) = (store.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            for n in &plan {
                match store.create(&actor(), ws.id, dir, &name(n), &file()).await {
                    Ok(_) => {}
                    // Tasks 0 and 1 race for frames 30-40: either may win each.
                    Err(e) if e.kind() == ErrorKind::Exists && t <= 1 => {}
                    Err(e) => panic!("create {n}: {e}"),
                }
            }
            if t == 3 {
                for f in (201..=240).step_by(3) {
                    store
                        .unlink(&actor(), ws.id, dir, &name(&frame(f)))
                        .await
                        .unwrap();
                }
            }
            done.fetch_add(1, Ordering::SeqCst);
        }));
    }
    {
        // A remover deleting frames 10-20 of task 0 as soon as each exists.
        let (store, done) = (store.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            for f in 10..=20 {
                wait_for(&store, dir, &frame(f)).await;
                store
                    .unlink(&actor(), ws.id, dir, &name(&frame(f)))
                    .await
                    .unwrap();
            }
            done.fetch_add(1, Ordering::SeqCst);
        }));
    }
    let writers = tasks.len();
    {
        // Folds pending changes while they are being appended; never sees a frame no task
        // created.
        let store = store.clone();
        let done = done.clone();
        let ever = ever.clone();
        tasks.push(tokio::spawn(async move {
            while done.load(Ordering::SeqCst) < writers {
                for seq in store.sequences(dir).await.unwrap() {
                    for r in &seq.ranges {
                        for f in r.first..=r.last {
                            let n = format!(
                                "{}{f:0w$}{}",
                                String::from_utf8_lossy(&seq.key.prefix),
                                String::from_utf8_lossy(&seq.key.suffix),
                                w = seq.key.padding as usize
                            );
                            assert!(ever.contains(&n), "summary holds {n}, which nobody created");
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut expected: BTreeSet<String> = ever.clone();
    for f in (10..=20).chain((201..=240).step_by(3)) {
        expected.remove(&frame(f));
    }
    let listed: BTreeSet<String> = names_in(&store, View::Live, dir).await.into_iter().collect();
    assert_eq!(listed, expected, "the folder holds exactly the surviving frames");
    let text = check_summary(&store, dir, "after the race").await;
    assert_eq!(
        text,
        [
            "plate.%03d.dpx [1-25]",
            "shot.%04d.exr [1-9,21-70,100-130,200,202-203,205-206,208-209,211-212,214-215,217-218,\
             220-221,223-224,226-227,229-230,232-233,235-236,238-239]",
            "shot.%05d.exr [1-10]",
        ]
    );
    check_summary(&store, dir, "read again").await;
}
