//! The mount's cache of directory entries and attributes, kept coherent by the change feed.
//!
//! Without it every `lookup` and `getattr` the kernel sends once its own TTLs expire is a
//! PostgreSQL round trip. With it they are answered from memory for as long as the feed says
//! nothing changed:
//!
//! - this mount's own mutations update the cache when they commit (and forget what they
//!   touched when they fail, since a failed commit may still have landed);
//! - other writers' changes arrive as change-feed events, which forget what they name
//!   ([`MetaCache::forget_event`]);
//! - the cache answers only while the feed is fresh: each poll that reads the feed to its
//!   end renews it for `max_staleness` after the poll started, so a stalled feed (PostgreSQL
//!   away) turns the cache off instead of serving old answers. Without a feed follower it
//!   never answers at all. A snapshot view cannot change and is always fresh.
//! - a fill that read the store races with invalidations: it carries the generation it
//!   started at and is dropped if anything was forgotten or changed since.
//!
//! Negative entries ("no such name") are cached too: they are what a create-heavy job looks up.
//! A directory this mount created is known to be complete (every entry it has is in the
//! cache) until anything about it is forgotten, so names missing from it need no store read:
//! a render writing frames into a fresh folder looks up each name before creating it.
//! The maps are bounded by `capacity` entries each and cleared when full (cheap, and a full
//! cache of an idle mount refills from the store at the cost it would have had anyway).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::model::{Attr, DirEntryPlus, Event, Name, NodeId};

/// What the cache knows about a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cached {
    /// The entry exists, with these attributes.
    Found(Attr),
    /// The entry does not exist.
    Absent,
    /// Ask the store.
    Unknown,
}

/// The generation a store read started at; see the module docs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket(u64);

/// Cache counters.
#[derive(Debug, Default)]
pub struct MetaCacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

#[derive(Default)]
struct State {
    generation: u64,
    attrs: HashMap<NodeId, Attr>,
    /// `None`: the name is known to be absent.
    entries: HashMap<(NodeId, Name), Option<NodeId>>,
    /// Directories whose every live entry is in `entries`.
    complete: HashSet<NodeId>,
    fresh_until: Option<Instant>,
}

pub(crate) struct MetaCache {
    state: Mutex<State>,
    capacity: usize,
    max_staleness: Duration,
    /// Snapshot views never change.
    immutable: bool,
    stats: Arc<MetaCacheStats>,
}

impl MetaCache {
    pub(crate) fn new(capacity: usize, max_staleness: Duration, immutable: bool) -> MetaCache {
        MetaCache {
            state: Mutex::new(State::default()),
            capacity,
            max_staleness,
            immutable,
            stats: Arc::default(),
        }
    }

    pub(crate) fn stats(&self) -> Arc<MetaCacheStats> {
        self.stats.clone()
    }

    fn fresh(&self, state: &State) -> bool {
        self.capacity > 0 && (self.immutable || state.fresh_until.is_some_and(|t| Instant::now() < t))
    }

    fn count(&self, hit: bool) {
        let counter = if hit { &self.stats.hits } else { &self.stats.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The entry `parent/name`.
    pub(crate) fn entry(&self, parent: NodeId, name: &Name) -> Cached {
        let state = crate::fs::lock(&self.state);
        let found = if self.fresh(&state) {
            match state.entries.get(&(parent, name.clone())) {
                Some(None) => Cached::Absent,
                Some(Some(node)) => state
                    .attrs
                    .get(node)
                    .cloned()
                    .map_or(Cached::Unknown, Cached::Found),
                None if state.complete.contains(&parent) => Cached::Absent,
                None => Cached::Unknown,
            }
        } else {
            Cached::Unknown
        };
        self.count(found != Cached::Unknown);
        found
    }

    /// The attributes of `node`.
    pub(crate) fn attr(&self, node: NodeId) -> Option<Attr> {
        let state = crate::fs::lock(&self.state);
        let found = if self.fresh(&state) {
            state.attrs.get(&node).cloned()
        } else {
            None
        };
        self.count(found.is_some());
        found
    }

    /// Taken before reading the store; the fill that follows presents it.
    pub(crate) fn ticket(&self) -> Ticket {
        Ticket(crate::fs::lock(&self.state).generation)
    }

    /// Stores what a lookup read, unless something changed since `ticket`.
    pub(crate) fn fill_entry(&self, ticket: Ticket, parent: NodeId, name: &Name, found: Option<&Attr>) {
        self.fill(ticket, |state, capacity| {
            if let Some(attr) = found {
                put_attr(state, attr, capacity);
            }
            put_entry(state, parent, name.clone(), found.map(|a| a.ino), capacity);
        });
    }

    /// Stores attributes read from the store, unless something changed since `ticket`.
    pub(crate) fn fill_attr(&self, ticket: Ticket, attr: &Attr) {
        self.fill(ticket, |state, capacity| put_attr(state, attr, capacity));
    }

    /// Stores a page of a directory listing, unless something changed since `ticket`.
    pub(crate) fn fill_listing(&self, ticket: Ticket, parent: NodeId, page: &[DirEntryPlus]) {
        self.fill(ticket, |state, capacity| {
            for e in page {
                put_attr(state, &e.attr, capacity);
                put_entry(state, parent, e.entry.name.clone(), Some(e.attr.ino), capacity);
            }
        });
    }

    fn fill(&self, ticket: Ticket, f: impl FnOnce(&mut State, usize)) {
        if self.capacity == 0 {
            return;
        }
        let mut state = crate::fs::lock(&self.state);
        if state.generation == ticket.0 {
            f(&mut state, self.capacity);
        }
    }

    /// Records this mount's committed change: `parent/name` now names `attr`'s node.
    pub(crate) fn set_entry(&self, parent: NodeId, name: &Name, attr: &Attr) {
        self.change(|state, capacity| {
            put_attr(state, attr, capacity);
            put_entry(state, parent, name.clone(), Some(attr.ino), capacity);
        });
    }

    /// Records that this mount created the empty directory `dir`: it is complete.
    pub(crate) fn set_empty_dir(&self, dir: NodeId) {
        self.change(|state, _| {
            state.complete.insert(dir);
        });
    }

    /// Records this mount's committed change of `attr`'s node.
    pub(crate) fn set_attr(&self, attr: &Attr) {
        self.change(|state, capacity| put_attr(state, attr, capacity));
    }

    /// Records that `parent/name` no longer exists (this mount removed it); the node it named
    /// changed too (link count, ctime). A complete directory stays complete: its entries are
    /// still all known.
    pub(crate) fn set_absent(&self, parent: NodeId, name: &Name) {
        self.change(|state, capacity| {
            drop_entry(state, parent, name);
            put_entry(state, parent, name.clone(), None, capacity);
        });
    }

    /// Records that this mount changed directory `dir`'s content at `now` (its mtime and ctime)
    /// ahead of the commit, which brings the exact values.
    pub(crate) fn touch_dir(&self, dir: NodeId, now: crate::model::Timestamp) {
        self.change(|state, _| {
            if let Some(attr) = state.attrs.get_mut(&dir) {
                attr.mtime = now;
                attr.ctime = now;
            }
        });
    }

    /// Forgets the entry `parent/name` and the node it named.
    pub(crate) fn forget_entry(&self, parent: NodeId, name: &Name) {
        self.change(|state, _| forget_entry(state, parent, name));
    }

    /// Forgets the attributes of `node`.
    pub(crate) fn forget_attr(&self, node: NodeId) {
        self.change(|state, _| {
            state.attrs.remove(&node);
        });
    }

    /// Forgets everything another writer's change may have made stale.
    pub(crate) fn forget_event(&self, event: &Event) {
        self.change(|state, _| {
            let mut known = false;
            if let Some(ino) = event.ino {
                state.attrs.remove(&ino);
                state.complete.remove(&ino);
                known = true;
            }
            if let Some(parent) = event.parent {
                state.attrs.remove(&parent);
                state.complete.remove(&parent);
                if let Some(name) = &event.name {
                    forget_entry(state, parent, name);
                }
                known = true;
            }
            if let Some((parent, name)) = &event.from {
                state.attrs.remove(parent);
                forget_entry(state, *parent, name);
            }
            // Events that name no node (workspace updates, shares) may change what any
            // answer would be, or nothing; forgetting everything is the safe reading. A
            // publish or a revert changes a whole subtree under one event: the same.
            let subtree = matches!(event.op.as_str(), "published" | "reverted");
            if subtree || (!known && !event.op.starts_with("share.")) {
                state.attrs.clear();
                state.entries.clear();
                state.complete.clear();
            }
        });
    }

    /// The change feed was read to its end by a poll that started at `poll_started`.
    pub(crate) fn feed_caught_up(&self, poll_started: Instant) {
        let mut state = crate::fs::lock(&self.state);
        state.fresh_until = Some(poll_started + self.max_staleness);
    }

    fn change(&self, f: impl FnOnce(&mut State, usize)) {
        let mut state = crate::fs::lock(&self.state);
        state.generation += 1;
        if self.capacity > 0 {
            f(&mut state, self.capacity);
        }
    }
}

fn put_attr(state: &mut State, attr: &Attr, capacity: usize) {
    if state.attrs.len() >= capacity && !state.attrs.contains_key(&attr.ino) {
        state.attrs.clear();
    }
    state.attrs.insert(attr.ino, attr.clone());
}

fn put_entry(state: &mut State, parent: NodeId, name: Name, node: Option<NodeId>, capacity: usize) {
    if state.entries.len() >= capacity {
        state.entries.clear();
        state.complete.clear();
    }
    state.entries.insert((parent, name), node);
}

/// Forgets an entry and the node it named; its directory is no longer known complete.
fn forget_entry(state: &mut State, parent: NodeId, name: &Name) {
    state.complete.remove(&parent);
    drop_entry(state, parent, name);
}

/// Removes an entry and the attributes of the node it named.
fn drop_entry(state: &mut State, parent: NodeId, name: &Name) {
    if let Some(Some(node)) = state.entries.remove(&(parent, name.clone())) {
        state.attrs.remove(&node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodeKind, Timestamp, WorkspaceId, test_attr};

    fn attr(ino: u64, size: u64) -> Attr {
        test_attr(ino, NodeKind::File, 0o644, 0, 0, size)
    }

    fn name(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    fn event(op: &str, ino: Option<u64>, entry: Option<(u64, &str)>, from: Option<(u64, &str)>) -> Event {
        Event {
            id: 1,
            workspace: WorkspaceId(uuid::Uuid::nil()),
            at: Timestamp(0),
            actor: "uid:0@other".into(),
            op: op.into(),
            ino: ino.map(NodeId),
            parent: entry.map(|(p, _)| NodeId(p)),
            name: entry.map(|(_, n)| name(n)),
            from: from.map(|(p, n)| (NodeId(p), name(n))),
            snapshot: None,
            epoch: None,
        }
    }

    fn fresh_cache() -> MetaCache {
        let cache = MetaCache::new(1000, Duration::from_secs(60), false);
        cache.feed_caught_up(Instant::now());
        cache
    }

    #[test]
    fn answers_only_while_the_feed_is_fresh() {
        let cache = MetaCache::new(1000, Duration::from_millis(50), false);
        cache.set_entry(NodeId(1), &name("a"), &attr(7, 3));
        assert_eq!(cache.entry(NodeId(1), &name("a")), Cached::Unknown, "no feed yet");
        let started = Instant::now();
        cache.feed_caught_up(started);
        assert_eq!(cache.entry(NodeId(1), &name("a")), Cached::Found(attr(7, 3)));
        // Renewed by a poll that started long ago: stale.
        cache.feed_caught_up(started - Duration::from_secs(1));
        assert_eq!(cache.entry(NodeId(1), &name("a")), Cached::Unknown);
        assert_eq!(cache.attr(NodeId(7)), None);
        let always = MetaCache::new(1000, Duration::ZERO, true);
        always.set_attr(&attr(9, 1));
        assert_eq!(
            always.attr(NodeId(9)),
            Some(attr(9, 1)),
            "snapshot views never go stale"
        );
    }

    #[test]
    fn a_fill_that_raced_with_a_change_is_dropped() {
        let cache = fresh_cache();
        let before = cache.ticket();
        cache.forget_attr(NodeId(3));
        cache.fill_entry(before, NodeId(1), &name("a"), Some(&attr(7, 3)));
        cache.fill_attr(before, &attr(8, 1));
        assert_eq!(cache.entry(NodeId(1), &name("a")), Cached::Unknown);
        assert_eq!(cache.attr(NodeId(8)), None);
        let now = cache.ticket();
        cache.fill_entry(now, NodeId(1), &name("b"), None);
        assert_eq!(cache.entry(NodeId(1), &name("b")), Cached::Absent);
    }

    #[test]
    fn events_forget_what_they_name() {
        let cache = fresh_cache();
        cache.set_entry(NodeId(1), &name("old"), &attr(7, 3));
        cache.set_entry(NodeId(2), &name("dst"), &attr(8, 4));
        cache.set_attr(&attr(1, 0));
        cache.set_attr(&attr(2, 0));
        cache.set_absent(NodeId(2), &name("gone"));
        // Another mount renamed 1/old over 2/dst: both entries, both dirs and the replaced
        // node are stale.
        cache.forget_event(&event("rename", Some(7), Some((2, "dst")), Some((1, "old"))));
        assert_eq!(cache.entry(NodeId(1), &name("old")), Cached::Unknown);
        assert_eq!(cache.entry(NodeId(2), &name("dst")), Cached::Unknown);
        assert_eq!(cache.attr(NodeId(1)), None);
        assert_eq!(cache.attr(NodeId(2)), None);
        assert_eq!(
            cache.attr(NodeId(8)),
            None,
            "the replaced node's link count changed"
        );
        assert_eq!(
            cache.entry(NodeId(2), &name("gone")),
            Cached::Absent,
            "unrelated entry kept"
        );
        cache.set_attr(&attr(5, 1));
        cache.forget_event(&event("write", Some(5), None, None));
        assert_eq!(cache.attr(NodeId(5)), None);
        cache.set_attr(&attr(6, 1));
        cache.forget_event(&event("share.put", None, None, None));
        assert_eq!(
            cache.attr(NodeId(6)),
            Some(attr(6, 1)),
            "shares change no attributes"
        );
        cache.forget_event(&event("workspace.update", None, None, None));
        assert_eq!(
            cache.attr(NodeId(6)),
            None,
            "an event naming no node forgets everything"
        );
    }

    #[test]
    fn a_directory_made_here_answers_absent_names_until_others_touch_it() {
        let cache = fresh_cache();
        let dir = NodeId(50);
        cache.set_empty_dir(dir);
        assert_eq!(cache.entry(dir, &name("frame.0001.exr")), Cached::Absent);
        cache.set_entry(dir, &name("frame.0001.exr"), &attr(51, 0));
        assert_eq!(
            cache.entry(dir, &name("frame.0001.exr")),
            Cached::Found(attr(51, 0))
        );
        assert_eq!(cache.entry(dir, &name("frame.0002.exr")), Cached::Absent);
        // Removing a name of our own keeps it complete.
        cache.set_absent(dir, &name("frame.0001.exr"));
        assert_eq!(cache.entry(dir, &name("frame.0001.exr")), Cached::Absent);
        assert_eq!(cache.entry(dir, &name("frame.0003.exr")), Cached::Absent);
        cache.set_entry(dir, &name("frame.0001.exr"), &attr(51, 0));
        // Another mount created a file in it: names not cached are unknown again.
        cache.forget_event(&event("create", Some(60), Some((50, "theirs")), None));
        assert_eq!(cache.entry(dir, &name("theirs")), Cached::Unknown);
        assert_eq!(cache.entry(dir, &name("frame.0002.exr")), Cached::Unknown);
        // A failed change of our own forgets completeness too.
        cache.set_empty_dir(NodeId(70));
        cache.forget_entry(NodeId(70), &name("x"));
        assert_eq!(cache.entry(NodeId(70), &name("y")), Cached::Unknown);
        // So does a rename out of it by another mount.
        cache.set_empty_dir(NodeId(80));
        cache.forget_event(&event("rename", Some(81), Some((90, "b")), Some((80, "a"))));
        assert_eq!(cache.entry(NodeId(80), &name("z")), Cached::Unknown);
    }

    #[test]
    fn removal_makes_the_name_absent_and_forgets_the_node() {
        let cache = fresh_cache();
        cache.set_entry(NodeId(1), &name("f"), &attr(7, 3));
        cache.set_absent(NodeId(1), &name("f"));
        assert_eq!(cache.entry(NodeId(1), &name("f")), Cached::Absent);
        assert_eq!(cache.attr(NodeId(7)), None);
    }

    #[test]
    fn bounded_by_capacity() {
        let cache = MetaCache::new(10, Duration::from_secs(60), false);
        cache.feed_caught_up(Instant::now());
        for i in 0..25 {
            cache.set_entry(NodeId(1), &name(&format!("f{i}")), &attr(100 + i, 0));
        }
        let state = crate::fs::lock(&cache.state);
        assert!(state.attrs.len() <= 10 && state.entries.len() <= 10);
        assert!(
            state.entries.contains_key(&(NodeId(1), name("f24"))),
            "the newest is kept"
        );
    }

    #[test]
    fn capacity_zero_turns_it_off() {
        let cache = MetaCache::new(0, Duration::from_secs(60), true);
        cache.set_entry(NodeId(1), &name("a"), &attr(7, 3));
        assert_eq!(cache.entry(NodeId(1), &name("a")), Cached::Unknown);
    }
}
